//! OVA: a tar with an OVF and its disks, read in place. One disk in
//! qemu-img's streamOptimized layout, one in VMware's (our writer); both
//! must read back as the raw data they came from.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use vmdk::ova::Ova;
use vmdk::{StreamOptimizedWriter, GRAIN_BYTES};

fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, c) in v.chunks_mut(4096).enumerate() {
        // A zero run every third page, compressible patterns elsewhere.
        if i % 3 != 0 {
            for (k, b) in c.iter_mut().enumerate() {
                *b = ((k as u32 ^ seed).wrapping_mul(2_654_435_761) >> (i % 20)) as u8;
            }
        }
    }
    v
}

fn ovf(disk1: &str, disk2: &str, cap1: usize, cap2: usize) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="{disk1}" ovf:id="file1"/>
    <File ovf:href="{disk2}" ovf:id="file2"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{cap1}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="{cap2}" ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="web01">
    <Info>A virtual machine</Info>
    <Name>web01</Name>
    <VirtualHardwareSection>
      <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

fn append(b: &mut tar::Builder<File>, name: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, bytes).unwrap();
}

#[test]
fn ova_with_both_stream_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Disk 1: qemu-img's streamOptimized, odd size.
    let raw1 = data(3 * 1024 * 1024 + 7 * 512, 1);
    std::fs::write(d.join("one.raw"), &raw1).unwrap();
    let out = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(d.join("one.raw"))
        .arg(d.join("one.vmdk"))
        .output()
        .unwrap_or_else(|e| panic!("qemu-img could not be run ({e}): install qemu-utils"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk1 = std::fs::read(d.join("one.vmdk")).unwrap();
    // Disk 2: VMware's layout, from our writer.
    let raw2 = data(2 * GRAIN_BYTES as usize + 4096, 2);
    let mut w = StreamOptimizedWriter::new(Vec::new(), raw2.len() as u64).unwrap();
    for (i, g) in raw2.chunks(GRAIN_BYTES as usize).enumerate() {
        w.write_grain(i as u64 * GRAIN_BYTES, g).unwrap();
    }
    let disk2 = w.finish().unwrap();

    let ova_path = d.join("vm.ova");
    let mut b = tar::Builder::new(File::create(&ova_path).unwrap());
    append(
        &mut b,
        "vm.ovf",
        ovf("vm-disk1.vmdk", "vm-disk2.vmdk", raw1.len(), raw2.len()).as_bytes(),
    );
    append(&mut b, "vm.mf", b"SHA256(vm.ovf)= 00\n");
    append(&mut b, "vm-disk1.vmdk", &disk1);
    append(&mut b, "vm-disk2.vmdk", &disk2);
    b.into_inner().unwrap();

    let ova = Ova::open(&ova_path).unwrap();
    assert!(ova.ovf_xml().contains("<Name>web01</Name>"));
    let systems = ova.systems();
    assert_eq!(systems.len(), 1);
    assert_eq!(systems[0].name, "web01");
    assert_eq!(systems[0].disks.len(), 2);
    for (disk, raw) in systems[0].disks.iter().zip([&raw1, &raw2]) {
        assert_eq!(disk.capacity_bytes, raw.len() as u64);
        let vd = ova.open_disk(disk).unwrap();
        assert_eq!(vd.create_type(), "streamOptimized");
        assert_eq!(vd.capacity_bytes(), raw.len() as u64);
        let mut got = vec![0u8; raw.len()];
        vd.read_at(&mut got, 0).unwrap();
        assert!(got == *raw, "{} reads back as its source", disk.file_href);
        assert!(vd.name().ends_with(&disk.file_href));
    }
}

#[test]
fn bad_ovas_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let check = |name: &str, build: &dyn Fn(&Path), want: &str| {
        let p = d.join(name);
        build(&p);
        let msg = match Ova::open(&p) {
            Err(e) => e.to_string(),
            Ok(ova) => {
                let disk = ova.disks().first().expect("a disk").clone();
                ova.open_disk(&disk).expect_err("must fail").to_string()
            }
        };
        assert!(msg.contains(want), "{name}: want {want:?} in {msg}");
    };
    check(
        "not-a-tar.ova",
        &|p| {
            let f = File::create(p).unwrap();
            f.write_all_at(&[0xffu8; 2048], 0).unwrap();
        },
        "OVA: ",
    );
    check(
        "no-ovf.ova",
        &|p| {
            let mut b = tar::Builder::new(File::create(p).unwrap());
            append(&mut b, "disk.vmdk", b"x");
            b.into_inner().unwrap();
        },
        "no .ovf descriptor",
    );
    check(
        "missing-disk.ova",
        &|p| {
            let mut b = tar::Builder::new(File::create(p).unwrap());
            append(
                &mut b,
                "x.ovf",
                ovf("gone1.vmdk", "gone2.vmdk", 1, 1).as_bytes(),
            );
            b.into_inner().unwrap();
        },
        "no member named \"gone1.vmdk\"",
    );
    check(
        "garbage-disk.ova",
        &|p| {
            let mut b = tar::Builder::new(File::create(p).unwrap());
            append(&mut b, "x.ovf", ovf("d1.vmdk", "d2.vmdk", 1, 1).as_bytes());
            append(&mut b, "d1.vmdk", b"KDMV but then nothing");
            b.into_inner().unwrap();
        },
        "garbage-disk.ova/d1.vmdk: truncated: sparse header",
    );
    check(
        "bad-xml.ova",
        &|p| {
            let mut b = tar::Builder::new(File::create(p).unwrap());
            append(&mut b, "x.ovf", b"<Envelope><References></Envelope>");
            b.into_inner().unwrap();
        },
        "x.ovf: OVF: XML error",
    );
}
