//! Hostile input: truncated files, grain tables pointing past the end, at
//! each other or at metadata, absurd sizes, descriptor loops, bad compressed
//! streams, garbage descriptors. Each is a clear error naming the file, never
//! a panic, a hang or an allocation sized by the input.

use std::io::Write;
use std::sync::Arc;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use vmdk::{
    open_chain, Disk, MemSource, RunKind, Source, StreamOptimizedWriter, VmdkError, GRAIN_BYTES,
};

const NAME: &str = "hostile.vmdk";

fn put_u32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_le_bytes());
}
fn put_u64(v: &mut [u8], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_le_bytes());
}

// Header field offsets.
const H_FLAGS: usize = 8;
const H_CAPACITY: usize = 12;
const H_GRAIN: usize = 20;
const H_GTES: usize = 44;
const H_GD: usize = 56;
const H_VERSION: usize = 4;
const H_COMPRESS: usize = 77;

/// A small valid monolithicSparse, by hand: 4 grains of 8 sectors; header
/// (sector 0), descriptor (1..3), GD (3), GT (4..8), grain 0 at sector 8,
/// grain 2 at sector 16; 24 sectors in all. Grain 3 is a zeroed grain.
fn handmade(descriptor: &str) -> Vec<u8> {
    let mut v = vec![0u8; 24 * 512];
    put_u32(&mut v, 0, 0x564d_444b);
    put_u32(&mut v, H_VERSION, 1);
    put_u32(&mut v, H_FLAGS, 1 | 4); // newline test, zeroed-grain GTEs
    put_u64(&mut v, H_CAPACITY, 32);
    put_u64(&mut v, H_GRAIN, 8);
    put_u64(&mut v, 28, 1); // descriptor offset
    put_u64(&mut v, 36, 2); // descriptor size
    put_u32(&mut v, H_GTES, 512);
    put_u64(&mut v, H_GD, 3);
    put_u64(&mut v, 64, 8); // overhead
    v[73..77].copy_from_slice(b"\n \r\n");
    assert!(descriptor.len() <= 1024);
    v[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
    put_u32(&mut v, 3 * 512, 4); // GD[0] -> GT at sector 4
    put_u32(&mut v, 4 * 512, 8); // grain 0 at sector 8
    put_u32(&mut v, 4 * 512 + 8, 16); // grain 2 at sector 16
    put_u32(&mut v, 4 * 512 + 12, 1); // grain 3: zeroed
    for (i, b) in v[8 * 512..16 * 512].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    v[16 * 512..24 * 512].fill(0x5a);
    v
}

const DESC: &str = "# Disk DescriptorFile\nversion=1\nCID=00000001\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW 32 SPARSE \"hostile.vmdk\"\n";

fn no_extents(name: &str) -> Result<(Arc<dyn Source>, String), VmdkError> {
    Err(VmdkError::Unsupported {
        file: name.to_string(),
        what: "no extent files in this test".to_string(),
    })
}

fn open_mem(bytes: Vec<u8>) -> Result<Disk, VmdkError> {
    Disk::open_source(NAME, Arc::new(MemSource(bytes)), &no_extents)
}

/// Opens, lists runs and reads everything; the first error.
fn exercise(bytes: Vec<u8>) -> Result<(), VmdkError> {
    let d = open_mem(bytes)?;
    d.runs()?;
    let cap = d.capacity_bytes().min(1 << 20);
    let mut buf = vec![0u8; cap as usize];
    d.read_at(&mut buf, 0)
}

fn err_of(bytes: Vec<u8>) -> String {
    let e = exercise(bytes).expect_err("hostile input must be refused");
    let msg = e.to_string();
    assert!(msg.starts_with(NAME), "error names the file: {msg}");
    msg
}

#[test]
fn handmade_file_reads_right() {
    let d = open_mem(handmade(DESC)).unwrap();
    assert_eq!(d.capacity_bytes(), 32 * 512);
    assert_eq!(d.create_type(), "monolithicSparse");
    let runs = d.runs().unwrap();
    let got: Vec<_> = runs
        .iter()
        .map(|r| (r.offset_bytes, r.len_bytes, r.kind))
        .collect();
    assert_eq!(
        got,
        [
            (0, 4096, RunKind::Data),
            (8192, 4096, RunKind::Data),
            (12288, 4096, RunKind::Zero)
        ]
    );
    let mut buf = vec![0u8; 16384];
    d.read_at(&mut buf, 0).unwrap();
    let v = handmade(DESC);
    assert_eq!(&buf[..4096], &v[8 * 512..16 * 512]);
    assert!(buf[4096..8192].iter().all(|&b| b == 0));
    assert!(buf[8192..12288].iter().all(|&b| b == 0x5a));
    assert!(buf[12288..].iter().all(|&b| b == 0));
}

#[test]
fn every_truncation_is_an_error() {
    let v = handmade(DESC);
    for cut in (0..v.len())
        .step_by(97)
        .chain([511, 512, 1535, 1536, 2047, v.len() - 1])
    {
        let msg = err_of(v[..cut].to_vec());
        assert!(
            msg.contains("truncated")
                || msg.contains("past the end")
                || msg.contains("not a VMDK")
                || msg.contains("descriptor"),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn grain_table_entry_past_the_end() {
    let mut v = handmade(DESC);
    put_u32(&mut v, 4 * 512 + 4, 1000);
    let msg = err_of(v);
    assert!(
        msg.contains(
            "grain table 0 entry 1 points past the end of the file (offset 516096 > len 12288)"
        ),
        "{msg}"
    );
}

#[test]
fn grain_pointing_at_metadata_or_another_grain() {
    // At the grain table itself.
    let mut v = handmade(DESC);
    put_u32(&mut v, 4 * 512 + 4, 4);
    let msg = err_of(v);
    assert!(
        msg.contains("overlaps") && msg.contains("grain table 0"),
        "{msg}"
    );
    // Over the descriptor, directory and table (the zeroed-grain flag off
    // makes GTE 1 a real sector); it reaches grain 0 too.
    let mut v = handmade(DESC);
    put_u32(&mut v, H_FLAGS, 1);
    let msg = err_of(v);
    assert!(
        msg.contains("the grain of grain table 0 entry 3 (bytes 512..4608) overlaps"),
        "{msg}"
    );
    // Two entries at one grain.
    let mut v = handmade(DESC);
    put_u32(&mut v, 4 * 512 + 4, 16);
    let msg = err_of(v);
    assert!(
        msg.contains("overlaps") && msg.contains("grain table 0 entry"),
        "{msg}"
    );
    // Half over another grain.
    let mut v = handmade(DESC);
    put_u32(&mut v, 4 * 512 + 8, 12);
    let msg = err_of(v);
    assert!(msg.contains("overlaps"), "{msg}");
    // A grain over the descriptor only.
    let mut v = handmade(DESC);
    put_u64(&mut v, H_GRAIN, 1);
    put_u64(&mut v, H_CAPACITY, 4);
    put_u32(&mut v, 4 * 512, 2);
    put_u32(&mut v, 4 * 512 + 8, 0);
    put_u32(&mut v, 4 * 512 + 12, 0);
    let msg = err_of(v);
    assert!(msg.contains("overlaps the embedded descriptor"), "{msg}");
    // The directory pointing a table at itself.
    let mut v = handmade(DESC);
    put_u32(&mut v, 3 * 512, 3);
    let msg = err_of(v);
    assert!(
        msg.contains("overlaps") && msg.contains("grain directory"),
        "{msg}"
    );
    // The directory pointing a table far past the end.
    let mut v = handmade(DESC);
    put_u32(&mut v, 3 * 512, 0x7fff_ffff);
    let msg = err_of(v);
    assert!(
        msg.contains("truncated") && msg.contains("grain table 0"),
        "{msg}"
    );
}

#[test]
fn absurd_header_fields() {
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|v| put_u64(v, H_GRAIN, 3)), "power of two"),
        (Box::new(|v| put_u64(v, H_GRAIN, 0)), "power of two"),
        (
            Box::new(|v| put_u64(v, H_GRAIN, 1 << 40)),
            "grain size in sectors exceeds the limit",
        ),
        (
            Box::new(|v| put_u64(v, H_CAPACITY, u64::MAX)),
            "capacity in sectors exceeds the limit",
        ),
        (
            Box::new(|v| put_u64(v, H_CAPACITY, 1 << 37)),
            "grain directory entries exceeds the limit",
        ),
        (
            Box::new(|v| put_u32(v, H_GTES, 0)),
            "entries per grain table",
        ),
        (
            Box::new(|v| put_u32(v, H_GTES, 1 << 31)),
            "entries per grain table",
        ),
        (Box::new(|v| put_u32(v, H_VERSION, 99)), "version 99"),
        (Box::new(|v| v[H_COMPRESS] = 7), "compression algorithm 7"),
        (
            Box::new(|v| put_u64(v, H_GD, u64::MAX - 5)),
            "grain directory",
        ),
        (
            Box::new(|v| put_u64(v, H_GD, 0)),
            "grain directory offset is 0",
        ),
        (
            Box::new(|v| put_u64(v, 36, u64::MAX / 2)),
            "embedded descriptor",
        ),
        // A capacity the grain directory cannot cover within the file.
        (Box::new(|v| put_u64(v, H_CAPACITY, 1 << 30)), "truncated"),
    ];
    for (mutate, want) in cases {
        let mut v = handmade(DESC);
        mutate(&mut v);
        let msg = err_of(v);
        assert!(msg.contains(want), "want {want:?} in: {msg}");
    }
}

#[test]
fn garbage_descriptors() {
    for text in [
        &b""[..],
        b"\x00\x01\x02 binary junk",
        b"# Disk DescriptorFile\nversion=1\n",
        b"# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n",
        b"# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW -5 FLAT \"x\"\n",
        b"# Disk DescriptorFile\ncreateType=\"x\"\nRW 10 VMFSSPARSE \"x\"\n",
        b"COWD and the rest of an ESX3 sparse file",
    ] {
        let msg = err_of(text.to_vec());
        assert!(!msg.is_empty());
    }
    // The embedded descriptor of a sparse file too.
    let msg = err_of(handmade("just some words\n"));
    assert!(msg.contains("bad descriptor"), "{msg}");
    // A big file that is not sparse is not read whole as a descriptor.
    let msg = err_of(vec![b'#'; 5 << 20]);
    assert!(msg.contains("too large to be a descriptor"), "{msg}");
    // An extent file that cannot be opened is named.
    let e = open_mem(
        b"# Disk DescriptorFile\ncreateType=\"x\"\nRW 10 FLAT \"missing-file\"\n".to_vec(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("missing-file: "), "{e}");
}

/// ZERO extents (qemu ignores them, VMware has them): read as zeros and
/// reported as Zero runs between the flat extents around them.
#[test]
fn zero_extent_between_flat_extents() {
    let flat: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8 + 1).collect();
    let desc = b"# Disk DescriptorFile\ncreateType=\"vmfs\"\nRW 4 VMFS \"f\"\nRW 3 ZERO\nRDONLY 2 FLAT \"f\" 6\n".to_vec();
    let flat2 = flat.clone();
    let resolver = move |name: &str| -> Result<(Arc<dyn Source>, String), VmdkError> {
        assert_eq!(name, "f");
        Ok((
            Arc::new(MemSource(flat2.clone())) as Arc<dyn Source>,
            name.to_string(),
        ))
    };
    let d = Disk::open_source("z.vmdk", Arc::new(MemSource(desc)), &resolver).unwrap();
    assert_eq!(d.capacity_bytes(), 9 * 512);
    let kinds: Vec<_> = d
        .runs()
        .unwrap()
        .iter()
        .map(|r| (r.offset_bytes, r.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (0, RunKind::Data),
            (2048, RunKind::Zero),
            (3584, RunKind::Data)
        ]
    );
    let mut buf = vec![0xffu8; 9 * 512];
    d.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..2048], &flat[..2048]);
    assert!(buf[2048..3584].iter().all(|&b| b == 0));
    assert_eq!(&buf[3584..], &flat[3072..4096]);
    // Short flat file: refused at open.
    let desc = b"# Disk DescriptorFile\ncreateType=\"vmfs\"\nRW 9 VMFS \"f\"\n".to_vec();
    let e = Disk::open_source("z.vmdk", Arc::new(MemSource(desc)), &resolver).unwrap_err();
    assert!(e.to_string().contains("truncated: flat extent 0"), "{e}");
}

fn stream(len: u64) -> Vec<u8> {
    let mut w = StreamOptimizedWriter::new(Vec::new(), len).unwrap();
    let mut g = vec![0u8; GRAIN_BYTES as usize];
    let mut off = 0;
    let mut i = 0u32;
    while off < len {
        let n = (len - off).min(GRAIN_BYTES) as usize;
        for (k, b) in g[..n].iter_mut().enumerate() {
            *b = ((k as u32).wrapping_mul(2654435761).wrapping_add(i) >> 13) as u8;
        }
        w.write_grain(off, &g[..n]).unwrap();
        off += n as u64;
        i += 1;
    }
    w.finish().unwrap()
}

/// The first grain of the writer's output: sector 128 (after the header).
const FIRST_GRAIN: usize = 128 * 512;

#[test]
fn vmware_stream_layout_reads_and_refuses_damage() {
    let len = 3 * GRAIN_BYTES + 1024;
    let good = stream(len);
    exercise(good.clone()).unwrap();
    let d = open_mem(good.clone()).unwrap();
    assert_eq!(d.create_type(), "streamOptimized");
    assert_eq!(d.capacity_bytes(), len);

    // Deflate data damaged.
    let mut v = good.clone();
    for b in &mut v[FIRST_GRAIN + 12 + 2..FIRST_GRAIN + 12 + 40] {
        *b ^= 0x55;
    }
    let msg = err_of(v);
    assert!(
        msg.contains("grain table 0 entry 0: compressed grain at offset 65536"),
        "{msg}"
    );
    // Compressed size absurd, zero, or past the end.
    for (size, want) in [
        (u32::MAX, "compressed size 4294967295 is more than"),
        (0, "points at a metadata marker"),
        (GRAIN_BYTES as u32, "points past the end"),
    ] {
        let mut v = good.clone();
        let last_grain = {
            // Find the last grain marker: lba of grain 3 (sector 384).
            let pat = (3 * GRAIN_BYTES / 512).to_le_bytes();
            (FIRST_GRAIN..v.len() - 12)
                .step_by(512)
                .find(|&o| v[o..o + 8] == pat)
                .unwrap()
        };
        let at = if size == GRAIN_BYTES as u32 {
            last_grain
        } else {
            FIRST_GRAIN
        };
        put_u32(&mut v, at + 8, size);
        let msg = err_of(v);
        assert!(msg.contains(want), "{want}: {msg}");
    }
    // Stream cut short: no footer.
    let msg = err_of(good[..good.len() - 512].to_vec());
    assert!(msg.contains("footer"), "{msg}");
    let msg = err_of(good[..FIRST_GRAIN + 1000].to_vec());
    assert!(msg.contains("footer"), "{msg}");
    // Footer whose directory is "at the end" too.
    let mut v = good.clone();
    let n = v.len();
    put_u64(&mut v, n - 1024 + H_GD, u64::MAX);
    let msg = err_of(v);
    assert!(msg.contains("also \"at the end\""), "{msg}");
}

/// A grain that inflates to more than a grain (a deflate bomb) is refused
/// without inflating past one grain.
#[test]
fn deflate_bomb_is_refused() {
    let mut v = handmade(DESC);
    v[H_COMPRESS] = 1;
    put_u32(&mut v, H_FLAGS, 1 | 4 | (1 << 16) | (1 << 17));
    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    z.write_all(&vec![7u8; 64 << 20]).unwrap();
    let bomb = z.finish().unwrap();
    assert!(bomb.len() < 100 * 1024);
    // Grain 0 -> a grain marker at sector 24, after the current end.
    v.truncate(24 * 512);
    put_u32(&mut v, 4 * 512, 24);
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&(bomb.len() as u32).to_le_bytes());
    v.extend_from_slice(&bomb);
    // Too big a compressed size for a 4 KiB grain: refused at open.
    let msg = err_of(v.clone());
    assert!(
        msg.contains("is more than a 4096-byte grain can take"),
        "{msg}"
    );
    // A small bomb: 4 KiB grain, 64 KiB of zeros.
    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    z.write_all(&[0u8; 65536]).unwrap();
    let small = z.finish().unwrap();
    v.truncate(24 * 512);
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&(small.len() as u32).to_le_bytes());
    v.extend_from_slice(&small);
    put_u32(&mut v, 4 * 512 + 8, 0); // drop grain 2 (sector 16 is now a plain grain)
    let msg = err_of(v);
    assert!(msg.contains("inflates to more than a grain"), "{msg}");
}

#[test]
fn descriptor_loops_and_deep_chains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sparse_with_parent = |name: &str, parent: Option<&str>| {
        let hint = parent
            .map(|p| format!("parentFileNameHint=\"{p}\"\n"))
            .unwrap_or_default();
        let desc = format!("# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\n{hint}RW 32 SPARSE \"{name}\"\n");
        std::fs::write(d.join(name), handmade(&desc)).unwrap();
    };
    // Itself as parent.
    sparse_with_parent("self.vmdk", Some("self.vmdk"));
    let e = open_chain(&d.join("self.vmdk")).unwrap_err();
    assert!(matches!(e, VmdkError::ChainLoop { .. }), "{e}");
    assert!(e.to_string().contains("parent chain loops back to"), "{e}");
    // a -> b -> a.
    sparse_with_parent("a.vmdk", Some("b.vmdk"));
    sparse_with_parent("b.vmdk", Some("./a.vmdk"));
    let e = open_chain(&d.join("a.vmdk")).unwrap_err();
    assert!(matches!(e, VmdkError::ChainLoop { .. }), "{e}");
    // 70 deep: over the limit, refused; 10 deep: fine.
    for i in 0..70 {
        let parent = (i > 0).then(|| format!("deep{}.vmdk", i - 1));
        sparse_with_parent(&format!("deep{i}.vmdk"), parent.as_deref());
    }
    let e = open_chain(&d.join("deep69.vmdk")).unwrap_err();
    assert!(
        e.to_string().contains("parent chain is deeper than 64"),
        "{e}"
    );
    assert_eq!(open_chain(&d.join("deep9.vmdk")).unwrap().len(), 10);
    // An absolute ESXi hint that is not here: the parent beside the child.
    sparse_with_parent(
        "esx-child.vmdk",
        Some("/vmfs/volumes/datastore1/vm/deep0.vmdk"),
    );
    assert_eq!(open_chain(&d.join("esx-child.vmdk")).unwrap().len(), 2);
    // A missing parent names it.
    sparse_with_parent("orphan.vmdk", Some("gone.vmdk"));
    let e = open_chain(&d.join("orphan.vmdk")).unwrap_err();
    assert!(e.to_string().contains("gone.vmdk"), "{e}");
    // An extent that is the descriptor itself.
    std::fs::write(
        d.join("loop.vmdk"),
        "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 1 FLAT \"loop.vmdk\"\n",
    )
    .unwrap();
    let e = Disk::open(&d.join("loop.vmdk")).unwrap_err();
    assert!(
        e.to_string().contains("is the descriptor file itself"),
        "{e}"
    );
    // A SPARSE extent that is a descriptor (text), not a sparse file.
    std::fs::write(
        d.join("outer.vmdk"),
        "# Disk DescriptorFile\ncreateType=\"twoGbMaxExtentSparse\"\nRW 32 SPARSE \"loop.vmdk\"\n",
    )
    .unwrap();
    let e = Disk::open(&d.join("outer.vmdk")).unwrap_err();
    assert!(e.to_string().contains("no KDMV magic"), "{e}");
    // A parentCID that does not match the parent's CID.
    let desc = "# Disk DescriptorFile\nCID=00000002\nparentCID=12345678\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"base.vmdk\"\nRW 32 SPARSE \"x\"\n";
    let base = handmade(&DESC.replace("CID=00000001\n", "CID=00000009\n"));
    std::fs::write(d.join("base.vmdk"), base).unwrap();
    std::fs::write(d.join("child.vmdk"), handmade(desc)).unwrap();
    let e = open_chain(&d.join("child.vmdk")).unwrap_err();
    assert!(
        e.to_string()
            .contains("parentCID 12345678 does not match the parent's CID 00000009"),
        "{e}"
    );
}

/// Random damage to valid files (hand-made sparse and the writer's
/// stream): whatever happens is an Ok or an Err, never a panic.
#[test]
fn random_damage_never_panics() {
    let bases = [handmade(DESC), stream(2 * GRAIN_BYTES + 512)];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut errors = 0;
    for round in 0..3000 {
        let mut v = bases[round % 2].clone();
        for _ in 0..1 + next() % 4 {
            // Bias to the metadata: header, descriptor, directory, tables,
            // and the footer at the end.
            let at = match next() % 3 {
                0 => (next() % 4096) as usize,
                1 => v.len() - 1 - (next() % 2048) as usize,
                _ => (next() as usize) % v.len(),
            };
            v[at] = next() as u8;
        }
        if exercise(v).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0, "some damage must be noticed");
}

/// The fuzz target's seeds (fuzz/seeds/vmdk_parse, input format in
/// fuzz/fuzz_targets/vmdk_parse.rs) are valid disks, so the fuzzer starts
/// past the header checks.
#[test]
fn fuzz_seeds_open() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/vmdk_parse");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let (control, rest) = data.split_first().unwrap();
        let (main, extent) = if control & 1 == 1 {
            let at = ((control >> 1) as usize * 64).min(rest.len());
            (&rest[..at], Some(rest[at..].to_vec()))
        } else {
            (rest, None)
        };
        let resolver = move |name: &str| -> Result<(Arc<dyn Source>, String), VmdkError> {
            let bytes = extent.clone().expect("an extent file");
            Ok((
                Arc::new(MemSource(bytes)) as Arc<dyn Source>,
                name.to_string(),
            ))
        };
        let d = Disk::open_source("seed", Arc::new(MemSource(main.to_vec())), &resolver)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!d.runs().unwrap().is_empty());
        let mut buf = vec![0u8; d.capacity_bytes() as usize];
        d.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().any(|&b| b != 0), "{}", path.display());
        n += 1;
    }
    assert!(n >= 4);
}
