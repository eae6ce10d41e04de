//! The text descriptor: `key=value` lines, extent lines and `ddb.*` entries.

use crate::{limits, VmdkError};

/// Kinds of extent line this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// Hosted sparse extent (KDMV header).
    Sparse,
    /// Raw bytes in a file at an offset.
    Flat,
    /// ESXi flat extent: the same as FLAT for reading.
    Vmfs,
    /// No file: reads as zeros.
    Zero,
}

/// One extent line: `RW 2048 FLAT "disk-flat.vmdk" 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    pub access: String,
    pub size_sectors: u64,
    pub kind: ExtentType,
    pub file_name: String,
    pub offset_sectors: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, Default)]
pub struct Descriptor {
    pub create_type: String,
    pub cid: Option<u32>,
    /// None when absent or `ffffffff` (no parent).
    pub parent_cid: Option<u32>,
    pub parent_file_name_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` entries (geometry, adapter type, ...), as written.
    pub ddb: Vec<(String, String)>,
}

impl Descriptor {
    /// For a sparse file without an embedded descriptor.
    pub(crate) fn implicit(create_type: &str) -> Descriptor {
        Descriptor {
            create_type: create_type.to_string(),
            ..Descriptor::default()
        }
    }

    /// Parses descriptor text; `file` names it in errors. An embedded
    /// descriptor is padded with NULs: the text ends at the first one.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Descriptor, VmdkError> {
        let bad = |why: String| VmdkError::BadDescriptor {
            file: file.to_string(),
            why,
        };
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text =
            std::str::from_utf8(&bytes[..end]).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
        let mut d = Descriptor::default();
        let mut saw_header = false;
        let mut create_type = None;
        let mut total_sectors = 0u64;
        for (no, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let lineno = no + 1;
            if line.is_empty() {
                continue;
            }
            if line.starts_with('#') {
                if line.to_ascii_lowercase().contains("disk descriptorfile") {
                    saw_header = true;
                }
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                if d.extents.len() >= limits::MAX_EXTENTS {
                    return Err(VmdkError::Limit {
                        file: file.to_string(),
                        what: "number of extents".to_string(),
                        value: d.extents.len() as u64 + 1,
                        limit: limits::MAX_EXTENTS as u64,
                    });
                }
                let e = parse_extent(line).map_err(|why| bad(format!("line {lineno}: {why}")))?;
                total_sectors = total_sectors
                    .checked_add(e.size_sectors)
                    .filter(|&s| s <= limits::MAX_CAPACITY_BYTES / crate::SECTOR_BYTES)
                    .ok_or_else(|| VmdkError::Limit {
                        file: file.to_string(),
                        what: "total size of the extents in bytes".to_string(),
                        value: total_sectors
                            .saturating_add(e.size_sectors)
                            .saturating_mul(512),
                        limit: limits::MAX_CAPACITY_BYTES,
                    })?;
                d.extents.push(e);
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(format!(
                    "line {lineno}: neither key=value nor an extent: {:?}",
                    clip(line)
                )));
            };
            let key = k.trim();
            let value = unquote(v.trim());
            if key.starts_with("ddb.") {
                d.ddb.push((key.to_string(), value.to_string()));
                continue;
            }
            match key {
                "createType" => create_type = Some(value.to_string()),
                "CID" => {
                    d.cid = Some(
                        parse_cid(value).map_err(|w| bad(format!("line {lineno}: CID: {w}")))?,
                    )
                }
                "parentCID" => {
                    let c = parse_cid(value)
                        .map_err(|w| bad(format!("line {lineno}: parentCID: {w}")))?;
                    d.parent_cid = (c != 0xffff_ffff).then_some(c);
                }
                "parentFileNameHint" => {
                    if value.is_empty() {
                        return Err(bad(format!("line {lineno}: empty parentFileNameHint")));
                    }
                    d.parent_file_name_hint = Some(value.to_string());
                }
                _ => {} // version, encoding, isNativeSnapshot, ...: not needed to read
            }
        }
        match create_type {
            Some(t) if !t.is_empty() => d.create_type = t,
            _ => {
                let why = if saw_header {
                    "no createType".to_string()
                } else {
                    "no createType (and no \"# Disk DescriptorFile\" line: is this a descriptor?)"
                        .to_string()
                };
                return Err(bad(why));
            }
        }
        Ok(d)
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn parse_cid(v: &str) -> Result<u32, String> {
    u32::from_str_radix(v, 16).map_err(|_| format!("not 8 hex digits: {:?}", clip(v)))
}

/// `ACCESS SIZE TYPE "FILE" [OFFSET]`; ZERO extents have no file.
fn parse_extent(line: &str) -> Result<ExtentLine, String> {
    let mut rest = line;
    let mut word = || -> Option<&str> {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        let (w, r) = t.split_at(end);
        rest = r;
        (!w.is_empty()).then_some(w)
    };
    let access = word().ok_or("no access mode")?.to_string();
    let size = word().ok_or("no size")?;
    let size_sectors: u64 = size
        .parse()
        .map_err(|_| format!("size {:?} is not a number of sectors", clip(size)))?;
    let ty = word().ok_or("no extent type")?;
    let kind = match ty {
        "SPARSE" => ExtentType::Sparse,
        "FLAT" => ExtentType::Flat,
        "VMFS" => ExtentType::Vmfs,
        "ZERO" => ExtentType::Zero,
        "VMFSSPARSE" | "SESPARSE" | "VMFSRDM" | "VMFSRAW" | "VMFSRAWDEVICEMAP" => {
            return Err(format!("extent type {ty} is not supported"))
        }
        other => return Err(format!("unknown extent type {:?}", clip(other))),
    };
    let t = rest.trim_start();
    let (file_name, after) = if let Some(q) = t.strip_prefix('"') {
        let close = q.find('"').ok_or("unterminated file name quote")?;
        (q[..close].to_string(), &q[close + 1..])
    } else if kind == ExtentType::Zero {
        (String::new(), t)
    } else {
        return Err("no quoted file name".to_string());
    };
    if kind != ExtentType::Zero && file_name.is_empty() {
        return Err("empty file name".to_string());
    }
    let mut parts = after.split_whitespace();
    let offset_sectors = match parts.next() {
        None => 0,
        Some(o) => o
            .parse()
            .map_err(|_| format!("offset {:?} is not a number of sectors", clip(o)))?,
    };
    if parts.next().is_some() {
        return Err("extra words after the offset".to_string());
    }
    if offset_sectors > limits::MAX_CAPACITY_BYTES / crate::SECTOR_BYTES {
        return Err(format!("offset {offset_sectors} sectors is absurd"));
    }
    Ok(ExtentLine {
        access,
        size_sectors,
        kind,
        file_name,
        offset_sectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_flat_descriptor() {
        let text = b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW 4096 VMFS \"my disk-flat.vmdk\"\nRW 10 ZERO\nRDONLY 20 FLAT \"x.raw\" 7\n\nddb.adapterType = \"lsilogic\"\n";
        let d = Descriptor::parse("d.vmdk", text).unwrap();
        assert_eq!(d.create_type, "vmfs");
        assert_eq!(d.cid, Some(0x12345678));
        assert_eq!(d.parent_cid, None);
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file_name, "my disk-flat.vmdk");
        assert_eq!(d.extents[1].kind, ExtentType::Zero);
        assert_eq!(d.extents[2].offset_sectors, 7);
        assert_eq!(d.ddb, vec![("ddb.adapterType".into(), "lsilogic".into())]);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        for bad in [
            &b"\xff\xfe garbage"[..],
            b"hello world\n",
            b"# Disk DescriptorFile\nversion=1\n",
            b"createType=\"x\"\nRW lots FLAT \"a\"\n",
            b"createType=\"x\"\nRW 1 FLAT \"a\n",
            b"createType=\"x\"\nRW 1 WHAT \"a\"\n",
            b"createType=\"x\"\nRW 18446744073709551615 FLAT \"a\"\nRW 18446744073709551615 FLAT \"a\"\n",
            b"createType=\"x\"\nCID=nothex\n",
        ] {
            let e = Descriptor::parse("g.vmdk", bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with("g.vmdk: "), "{msg}");
        }
    }
}
