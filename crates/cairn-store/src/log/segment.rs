//! Segment files: naming, headers, and read access through memory maps.
//!
//! Segments are append-only; only the writer appends, only recovery truncates
//! (before any reader exists). Readers read positions that the index handed
//! them, which are always below the committed end.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use memmap2::{Mmap, MmapOptions};

use crate::error::{Result, StoreError};
use crate::event::Event;
use crate::log::codec::{self, FRAME_HEADER_BYTES, Pos};

/// Bytes of the header at the start of every segment.
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 16;
const MAGIC: &[u8; 8] = b"CAIRNSEG";

/// The segment files of one store, mapped for reading.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    maps: RwLock<BTreeMap<u32, Arc<Mmap>>>,
}

impl Segments {
    pub(crate) fn new(dir: PathBuf) -> Segments {
        Segments { dir, maps: RwLock::new(BTreeMap::new()) }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, segment: u32) -> PathBuf {
        segment_path(&self.dir, segment)
    }

    /// Segment numbers present on disk, in order.
    pub(crate) fn list(&self) -> Result<Vec<u32>> {
        list_segments(&self.dir)
    }

    /// Maps (or re-maps) `segment` so that at least `len` bytes are readable.
    pub(crate) fn map(&self, segment: u32, len: u64) -> Result<()> {
        {
            let maps = self.maps.read().expect("segment map lock");
            if maps.get(&segment).is_some_and(|map| map.len() as u64 >= len) {
                return Ok(());
            }
        }
        let path = self.path(segment);
        let file = File::open(&path).map_err(StoreError::io(format!("open {}", path.display())))?;
        let map_len = len.max(SEGMENT_HEADER_BYTES);
        // The map may extend past the file's end (the active segment grows);
        // only bytes below the committed end are ever read.
        #[allow(unsafe_code)]
        // SAFETY: segment files are append-only while mapped: the writer only
        // appends, and truncation happens in recovery before any map exists.
        // Readers only touch offsets the index published after they were written.
        let map = unsafe { MmapOptions::new().len(map_len as usize).map(&file) }
            .map_err(StoreError::io(format!("map {}", path.display())))?;
        self.maps.write().expect("segment map lock").insert(segment, Arc::new(map));
        Ok(())
    }

    /// Forgets the maps of all segments (used before truncation in recovery).
    pub(crate) fn unmap_all(&self) {
        self.maps.write().expect("segment map lock").clear();
    }

    /// The bytes of `segment`, as mapped.
    pub(crate) fn bytes(&self, segment: u32) -> Result<Arc<Mmap>> {
        if let Some(map) = self.maps.read().expect("segment map lock").get(&segment) {
            return Ok(map.clone());
        }
        let len = fs::metadata(self.path(segment)).map_err(StoreError::io(format!("stat segment {segment}")))?.len();
        self.map(segment, len)?;
        self.maps
            .read()
            .expect("segment map lock")
            .get(&segment)
            .cloned()
            .ok_or_else(|| corrupt(segment, 0, "segment vanished"))
    }

    /// Reads and decodes the event at `pos`.
    pub(crate) fn read_event(&self, pos: Pos) -> Result<Event> {
        self.read_event_with(pos, &mut codec::Decoder::full())
    }

    /// Reads and decodes the event at `pos`, sharing `decoder`'s topic cache
    /// across the events of a scan.
    pub(crate) fn read_event_with(&self, pos: Pos, decoder: &mut codec::Decoder) -> Result<Event> {
        let end_needed = pos.offset as usize + FRAME_HEADER_BYTES + pos.len as usize;
        let map = match &decoder.map {
            // The segment of the previous event, mapped far enough: no lookup.
            Some(map) if decoder.map_segment == Some(pos.segment) && map.len() >= end_needed => map.clone(),
            _ => {
                let map = self.bytes(pos.segment)?;
                decoder.map = Some(map.clone());
                decoder.map_segment = Some(pos.segment);
                map
            }
        };
        let start = pos.offset as usize;
        let end = start + FRAME_HEADER_BYTES + pos.len as usize;
        let frame = map.get(start..end).ok_or_else(|| corrupt(pos.segment, pos.offset, "position is past the end"))?;
        let body = match codec::unframe(frame) {
            Ok(Some(body)) => body,
            Ok(None) => return Err(corrupt(pos.segment, pos.offset, "event frame is incomplete")),
            Err(detail) => return Err(corrupt(pos.segment, pos.offset, &detail)),
        };
        codec::decode_event_with(body, decoder).map_err(|detail| corrupt(pos.segment, pos.offset, &detail))
    }
}

/// A `Corrupt` error naming a place in the log.
pub(crate) fn corrupt(segment: u32, offset: u32, detail: &str) -> StoreError {
    StoreError::Corrupt { location: format!("log segment {segment:010} offset {offset}"), detail: detail.to_owned() }
}

pub(crate) fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.seg"))
}

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(StoreError::io(format!("list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list log directory"))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
        if let Ok(number) = stem.parse::<u32>() {
            out.push(number);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates segment `segment` with its header, fsyncs it and the directory.
pub(crate) fn create_segment(dir: &Path, segment: u32) -> Result<File> {
    let path = segment_path(dir, segment);
    let mut file = crate::private::file_options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(StoreError::io(format!("create {}", path.display())))?;
    use std::io::Write as _;
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&segment.to_le_bytes());
    header[12..16].copy_from_slice(&u32::from(codec::FORMAT_VERSION).to_le_bytes());
    file.write_all(&header).map_err(StoreError::io("write segment header"))?;
    file.sync_data().map_err(StoreError::io("fdatasync new segment"))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Checks a segment header; `segment` is the number its name says.
pub(crate) fn check_header(bytes: &[u8], segment: u32) -> std::result::Result<(), String> {
    let header = bytes.get(..SEGMENT_HEADER_BYTES as usize).ok_or("segment header is incomplete")?;
    if &header[..8] != MAGIC {
        return Err("not a cairn segment (bad magic)".to_owned());
    }
    let number = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if number != segment {
        return Err(format!("header says segment {number}"));
    }
    Ok(())
}

/// fsyncs a directory so that created or renamed entries in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io(format!("fsync directory {}", dir.display())))
}
