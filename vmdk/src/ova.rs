//! OVA: a tar holding an OVF descriptor (XML) and the disks it references.
//!
//! The tar is only listed (names, where each member's bytes start, sizes);
//! disks are read in place through [`SliceSource`]s, never copied out.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::{limits, read_checked, Disk, FileSource, SliceSource, Source, VmdkError};

/// A virtual machine described by the OVF, with the disks its hardware
/// section attaches (in the order it lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualSystem {
    /// `ovf:id` of the VirtualSystem.
    pub id: String,
    /// Its `<Name>`, or the id when there is none.
    pub name: String,
    pub disks: Vec<OvaDisk>,
}

/// A disk of the OVF's DiskSection and the file holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaDisk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:fileRef` (the File's `ovf:id`).
    pub file_id: String,
    /// The File's `ovf:href`: the member of the tar.
    pub file_href: String,
    /// `ovf:capacity` times `ovf:capacityAllocationUnits`.
    pub capacity_bytes: u64,
    /// `ovf:format` (a URL ending in "#streamOptimized" for VMware's).
    pub format: Option<String>,
}

struct Member {
    offset: u64,
    len: u64,
}

/// An opened OVA.
pub struct Ova {
    name: String,
    src: Arc<dyn Source>,
    members: HashMap<String, Member>,
    ovf_xml: String,
    systems: Vec<VirtualSystem>,
    disks: Vec<OvaDisk>,
}

impl std::fmt::Debug for Ova {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ova")
            .field("name", &self.name)
            .field("systems", &self.systems)
            .finish()
    }
}

impl Ova {
    pub fn open(path: &Path) -> Result<Ova, VmdkError> {
        let name = path.display().to_string();
        let bad = |why: String| VmdkError::BadOva {
            file: name.clone(),
            why,
        };
        let file = File::open(path).map_err(|source| VmdkError::Io {
            file: name.clone(),
            op: "opening".to_string(),
            source,
        })?;
        let src: Arc<dyn Source> = Arc::new(FileSource::open(path)?);
        check_tar_headers(&*src, &name)?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let mut ovf_name: Option<String> = None;
        let entries = archive
            .entries_with_seek()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(format!("bad tar entry: {e}")))?;
            if members.len() >= limits::MAX_OVA_MEMBERS {
                return Err(VmdkError::Limit {
                    file: name.clone(),
                    what: "members in the OVA".to_string(),
                    value: members.len() as u64 + 1,
                    limit: limits::MAX_OVA_MEMBERS as u64,
                });
            }
            let kind = entry.header().entry_type();
            if !kind.is_file() {
                continue;
            }
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = path.trim_start_matches("./").to_string();
            // The OVF spec puts the descriptor first; take the first .ovf.
            if ovf_name.is_none() && path.to_ascii_lowercase().ends_with(".ovf") {
                ovf_name = Some(path.clone());
            }
            members.insert(
                path,
                Member {
                    offset: entry.raw_file_position(),
                    len: entry.size(),
                },
            );
        }
        let Some(ovf_name) = ovf_name else {
            return Err(bad("no .ovf descriptor in the archive".to_string()));
        };
        let m = &members[&ovf_name];
        if m.len > limits::MAX_OVF_BYTES {
            return Err(VmdkError::Limit {
                file: format!("{name}/{ovf_name}"),
                what: "OVF descriptor size".to_string(),
                value: m.len,
                limit: limits::MAX_OVF_BYTES,
            });
        }
        let ovf_file = format!("{name}/{ovf_name}");
        let bytes = read_checked(&*src, &name, &format!("member {ovf_name}"), m.offset, m.len)?;
        let ovf_xml = String::from_utf8(bytes).map_err(|_| VmdkError::BadOvf {
            file: ovf_file.clone(),
            why: "not UTF-8".to_string(),
        })?;
        let (systems, disks) = parse_ovf(&ovf_file, &ovf_xml)?;
        Ok(Ova {
            name,
            src,
            members,
            ovf_xml,
            systems,
            disks,
        })
    }

    /// The virtual systems, each with the disks it attaches.
    pub fn systems(&self) -> &[VirtualSystem] {
        &self.systems
    }

    /// Every disk of the DiskSection (including any no system attaches).
    pub fn disks(&self) -> &[OvaDisk] {
        &self.disks
    }

    /// The OVF descriptor as stored (to keep with the imported volumes).
    pub fn ovf_xml(&self) -> &str {
        &self.ovf_xml
    }

    /// Opens a disk in place. Its extents (for a disk with a separate
    /// descriptor) are looked up among the archive's members.
    pub fn open_disk(&self, d: &OvaDisk) -> Result<Disk, VmdkError> {
        let src = self.member(&d.file_href)?;
        let shown = format!("{}/{}", self.name, d.file_href);
        let resolver = |extent: &str| -> Result<(Arc<dyn Source>, String), VmdkError> {
            if extent.trim_start_matches("./") == d.file_href.trim_start_matches("./") {
                return Err(VmdkError::ExtentLoop {
                    file: shown.clone(),
                    index: 0,
                    extent: extent.to_string(),
                });
            }
            Ok((self.member(extent)?, format!("{}/{}", self.name, extent)))
        };
        Disk::open_source(&shown, src, &resolver)
    }

    fn member(&self, href: &str) -> Result<Arc<dyn Source>, VmdkError> {
        let key = href.trim_start_matches("./");
        let m = self.members.get(key).ok_or_else(|| VmdkError::BadOva {
            file: self.name.clone(),
            why: format!("no member named {key:?}"),
        })?;
        Ok(Arc::new(SliceSource::new(
            self.src.clone(),
            m.offset,
            m.len,
        )))
    }
}

/// GNU long names and PAX headers are read whole into memory by the `tar`
/// crate; real ones are a few hundred bytes.
const MAX_TAR_EXTENSION_BYTES: u64 = 64 * 1024;

/// Walks the tar headers (without reading members) before the `tar` crate
/// does, refusing oversized extension headers and too many members.
fn check_tar_headers(src: &dyn Source, name: &str) -> Result<(), VmdkError> {
    let bad = |why: String| VmdkError::BadOva {
        file: name.to_string(),
        why,
    };
    let len = src.len_bytes();
    let mut at = 0u64;
    let mut headers = 0usize;
    let mut h = [0u8; 512];
    while at + 512 <= len {
        src.read_exact_at(&mut h, at)
            .map_err(|source| VmdkError::Io {
                file: name.to_string(),
                op: format!("reading the tar header at {at}"),
                source,
            })?;
        if h.iter().all(|&b| b == 0) {
            return Ok(()); // end-of-archive block
        }
        headers += 1;
        // Members plus their extension headers.
        if headers > 4 * limits::MAX_OVA_MEMBERS {
            return Err(VmdkError::Limit {
                file: name.to_string(),
                what: "tar headers in the OVA".to_string(),
                value: headers as u64,
                limit: 4 * limits::MAX_OVA_MEMBERS as u64,
            });
        }
        let size = tar_size(&h[124..136])
            .ok_or_else(|| bad(format!("tar header at {at}: bad size field")))?;
        if matches!(h[156], b'L' | b'K' | b'x' | b'g') && size > MAX_TAR_EXTENSION_BYTES {
            return Err(VmdkError::Limit {
                file: name.to_string(),
                what: format!(
                    "tar extension header at {at} (type {:?}) size",
                    h[156] as char
                ),
                value: size,
                limit: MAX_TAR_EXTENSION_BYTES,
            });
        }
        at = at
            .checked_add(512)
            .and_then(|a| a.checked_add(size.checked_next_multiple_of(512)?))
            .ok_or_else(|| bad(format!("tar header at {at}: size {size} overflows")))?;
    }
    Ok(())
}

/// A tar size field: octal digits (space/NUL padded) or, with the high bit
/// of the first byte set, big-endian base-256.
fn tar_size(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn attr(e: &BytesStart<'_>, local: &[u8]) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        (a.key.local_name().as_ref() == local)
            .then(|| {
                a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .ok()
                    .map(|v| v.into_owned())
            })
            .flatten()
    })
}

/// "byte", "byte * 2^30", "byte * 1024^3", "byte * 1024" -> multiplier.
fn allocation_units(s: &str) -> Option<u64> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let rest = s.strip_prefix("byte")?;
    if rest.is_empty() {
        return Some(1);
    }
    let rest = rest.strip_prefix('*')?;
    match rest.split_once('^') {
        Some((b, e)) => {
            let b: u64 = b.parse().ok()?;
            let e: u32 = e.parse().ok()?;
            b.checked_pow(e)
        }
        None => rest.parse().ok(),
    }
}

struct RawDisk {
    disk_id: String,
    file_id: String,
    capacity: String,
    units: Option<String>,
    format: Option<String>,
}

struct RawSystem {
    id: String,
    name: Option<String>,
    host_resources: Vec<String>,
}

fn parse_ovf(file: &str, xml: &str) -> Result<(Vec<VirtualSystem>, Vec<OvaDisk>), VmdkError> {
    let bad = |why: String| VmdkError::BadOvf {
        file: file.to_string(),
        why,
    };
    let too_many = || VmdkError::Limit {
        file: file.to_string(),
        what: "files, disks or systems in the OVF".to_string(),
        value: limits::MAX_OVF_ITEMS as u64 + 1,
        limit: limits::MAX_OVF_ITEMS as u64,
    };
    let mut reader = Reader::from_str(xml);
    let mut files: HashMap<String, (String, bool)> = HashMap::new();
    let mut raw_disks: Vec<RawDisk> = Vec::new();
    let mut systems: Vec<RawSystem> = Vec::new();
    // Open VirtualSystems (indexes into `systems`): collections may nest.
    let mut open_systems: Vec<usize> = Vec::new();
    // Element path, local names only; bounded by the document's size.
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut text = String::new();
    loop {
        let ev = reader.read_event().map_err(|e| {
            bad(format!(
                "XML error at byte {}: {e}",
                reader.buffer_position()
            ))
        })?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name().as_ref().to_vec();
                match local.as_slice() {
                    b"File" => {
                        if files.len() >= limits::MAX_OVF_ITEMS {
                            return Err(too_many());
                        }
                        let id =
                            attr(e, b"id").ok_or_else(|| bad("File without ovf:id".to_string()))?;
                        let href = attr(e, b"href")
                            .ok_or_else(|| bad(format!("File {id:?} without ovf:href")))?;
                        let chunked =
                            attr(e, b"chunkSize").is_some() || attr(e, b"compression").is_some();
                        files.insert(id, (href, chunked));
                    }
                    b"Disk" => {
                        if raw_disks.len() >= limits::MAX_OVF_ITEMS {
                            return Err(too_many());
                        }
                        let disk_id = attr(e, b"diskId")
                            .ok_or_else(|| bad("Disk without ovf:diskId".to_string()))?;
                        let capacity = attr(e, b"capacity")
                            .ok_or_else(|| bad(format!("Disk {disk_id:?} without ovf:capacity")))?;
                        raw_disks.push(RawDisk {
                            file_id: attr(e, b"fileRef").unwrap_or_default(),
                            units: attr(e, b"capacityAllocationUnits"),
                            format: attr(e, b"format"),
                            disk_id,
                            capacity,
                        });
                    }
                    b"VirtualSystem" => {
                        if systems.len() >= limits::MAX_OVF_ITEMS {
                            return Err(too_many());
                        }
                        systems.push(RawSystem {
                            id: attr(e, b"id").unwrap_or_default(),
                            name: None,
                            host_resources: Vec::new(),
                        });
                        if matches!(ev, Event::Start(_)) {
                            open_systems.push(systems.len() - 1);
                        }
                    }
                    _ => {}
                }
                if matches!(ev, Event::Start(_)) {
                    path.push(local);
                    text.clear();
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| bad(format!("bad text: {e}")))?;
                text.push_str(&s);
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c),
                    _ => match r.decode().as_deref() {
                        Ok("amp") => Some('&'),
                        Ok("lt") => Some('<'),
                        Ok("gt") => Some('>'),
                        Ok("quot") => Some('"'),
                        Ok("apos") => Some('\''),
                        _ => None, // custom entities are never expanded
                    },
                };
                text.extend(c);
            }
            Event::End(e) => {
                let local = e.local_name().as_ref().to_vec();
                let parent = path.len().checked_sub(2).map(|i| path[i].as_slice());
                if let Some(&si) = open_systems.last() {
                    let value = text.trim().to_string();
                    match local.as_slice() {
                        b"Name" if parent == Some(b"VirtualSystem") => {
                            systems[si].name = Some(value);
                        }
                        b"HostResource" => {
                            if systems[si].host_resources.len() >= limits::MAX_OVF_ITEMS {
                                return Err(too_many());
                            }
                            systems[si].host_resources.push(value);
                        }
                        b"VirtualSystem" => {
                            open_systems.pop();
                        }
                        _ => {}
                    }
                }
                path.pop();
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut disks = Vec::with_capacity(raw_disks.len());
    for d in raw_disks {
        let (href, chunked) = files.get(&d.file_id).ok_or_else(|| {
            bad(format!(
                "Disk {:?} refers to file {:?}, which References does not list",
                d.disk_id, d.file_id
            ))
        })?;
        if *chunked {
            return Err(VmdkError::Unsupported {
                file: file.to_string(),
                what: format!(
                    "file {href:?} is chunked or compressed (ovf:chunkSize / ovf:compression)"
                ),
            });
        }
        let units = match &d.units {
            None => 1,
            Some(u) => allocation_units(u).ok_or_else(|| {
                bad(format!(
                    "Disk {:?}: capacityAllocationUnits {u:?} not understood",
                    d.disk_id
                ))
            })?,
        };
        let capacity_bytes = d
            .capacity
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|c| c.checked_mul(units))
            .ok_or_else(|| {
                bad(format!(
                    "Disk {:?}: capacity {:?} not a size",
                    d.disk_id, d.capacity
                ))
            })?;
        disks.push(OvaDisk {
            disk_id: d.disk_id,
            file_id: d.file_id,
            file_href: href.clone(),
            capacity_bytes,
            format: d.format,
        });
    }
    let systems = systems
        .into_iter()
        .map(|s| {
            let attached = s
                .host_resources
                .iter()
                .filter_map(|r| {
                    let id = r.rsplit_once("/disk/").map(|(_, id)| id)?;
                    disks.iter().find(|d| d.disk_id == id).cloned()
                })
                .collect();
            VirtualSystem {
                name: s
                    .name
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| s.id.clone()),
                id: s.id,
                disks: attached,
            }
        })
        .collect();
    Ok((systems, disks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_sizes() {
        assert_eq!(tar_size(b"00000001750\0"), Some(1000));
        assert_eq!(tar_size(b"        \0\0\0\0"), Some(0));
        assert_eq!(
            tar_size(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(tar_size(b"0000000175x\0"), None);
    }

    #[test]
    fn huge_extension_header_is_refused() {
        let mut h = [0u8; 512];
        h[..9].copy_from_slice(b"././@Long");
        h[124..136].copy_from_slice(b"77777777777\0");
        h[156] = b'L';
        let e = check_tar_headers(&crate::MemSource(h.to_vec()), "x.ova").unwrap_err();
        assert!(e.to_string().contains("tar extension header at 0"), "{e}");
    }

    #[test]
    fn units() {
        assert_eq!(allocation_units("byte"), Some(1));
        assert_eq!(allocation_units("byte * 2^30"), Some(1 << 30));
        assert_eq!(allocation_units("byte * 1024^2"), Some(1 << 20));
        assert_eq!(allocation_units("byte * 512"), Some(512));
        assert_eq!(allocation_units("byte * 2^99"), None);
        assert_eq!(allocation_units("GigaBytes"), None);
    }

    #[test]
    fn parses_systems_and_disks() {
        let xml = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="a-disk1.vmdk"/><File ovf:id="file2" ovf:href="a-disk2.vmdk"/></References>
  <DiskSection><Info>x</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^30" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:capacity="1048576"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm-a"><Info>A VM</Info><Name>web &amp; db</Name>
    <VirtualHardwareSection><Item><rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource></Item>
    <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource></Item></VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;
        let (systems, disks) = parse_ovf("t.ovf", xml).unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].capacity_bytes, 2 << 30);
        assert_eq!(disks[1].capacity_bytes, 1 << 20);
        assert_eq!(systems.len(), 1);
        assert_eq!(systems[0].id, "vm-a");
        assert_eq!(systems[0].name, "web & db");
        let ids: Vec<_> = systems[0]
            .disks
            .iter()
            .map(|d| d.disk_id.as_str())
            .collect();
        assert_eq!(ids, ["vmdisk2", "vmdisk1"]);
        assert_eq!(systems[0].disks[1].file_href, "a-disk1.vmdk");
    }

    #[test]
    fn bad_ovf_is_an_error() {
        for xml in [
            "<Envelope><References><File ovf:id='f'/></References></Envelope>",
            "<Envelope><DiskSection><Disk ovf:diskId='d' ovf:fileRef='nope' ovf:capacity='1'/></DiskSection></Envelope>",
            "<Envelope><References><File ovf:id='f' ovf:href='x'/></References><DiskSection><Disk ovf:diskId='d' ovf:fileRef='f' ovf:capacity='1' ovf:capacityAllocationUnits='furlongs'/></DiskSection></Envelope>",
            "<Envelope><unclosed></Envelope>",
        ] {
            let e = parse_ovf("t.ovf", xml).unwrap_err();
            assert!(e.to_string().starts_with("t.ovf: "), "{e}");
        }
    }
}
