//! Segment files: naming, headers, and read access through memory maps.
//!
//! Segments are append-only; only the writer appends, only recovery truncates
//! (before any reader exists). Readers read positions that the index handed
//! them, which are always below the committed end.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use memmap2::{Mmap, MmapOptions};

use crate::error::{Result, StoreError};
use crate::event::Event;
use crate::log::codec::{self, FRAME_HEADER_BYTES, Pos};
use crate::log::compressed::{self, Chunk, Compressed, Window};

/// Bytes of the header at the start of every segment.
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 16;
const MAGIC: &[u8; 8] = b"CAIRNSEG";

/// The segment files of one store, mapped for reading.
///
/// A sealed segment may be rewritten by compaction (`compact.rs`) into a
/// new file of a higher generation: `<segment>.seg` is generation 0,
/// `<segment>.<gen>.seg` a later one. Positions and anchors name the
/// generation they point into, and the index says which one is current.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    maps: RwLock<BTreeMap<(u32, u32), Arc<Mmap>>>,
    /// Compressed generations, opened (their block index read) once.
    compressed: RwLock<BTreeMap<(u32, u32), Arc<Compressed>>>,
    /// Their decompressed blocks, for the whole store.
    blocks: Arc<compressed::BlockCache>,
    pins: Arc<Mutex<Pins>>,
}

/// A segment file to read: mapped as written, or compressed.
#[derive(Clone, Debug)]
pub(crate) enum SegmentFile {
    Plain(Arc<Mmap>),
    Compressed(Arc<Compressed>),
}

impl SegmentFile {
    /// Logical bytes from `start`, at least up to `min_end`, at most up to
    /// `max_end`: the logical offset where the returned bytes begin, and
    /// the bytes (a plain file gives all of `..max_end` at once).
    pub(crate) fn window(&self, start: usize, min_end: usize, max_end: usize) -> Result<(usize, Chunk)> {
        match self {
            SegmentFile::Plain(map) => {
                if max_end > map.len() || min_end > max_end {
                    return Err(corrupt(0, start as u32, "position past the end of the segment"));
                }
                Ok((0, Chunk::Map(map.clone(), 0, max_end)))
            }
            SegmentFile::Compressed(file) => file.window(start, min_end),
        }
    }

    /// The whole logical file; `plain_len` is a plain file's length.
    pub(crate) fn whole(&self, plain_len: usize) -> Result<Chunk> {
        match self {
            SegmentFile::Plain(map) => {
                if plain_len > map.len() {
                    return Err(corrupt(0, 0, "segment shorter than its file"));
                }
                Ok(Chunk::Map(map.clone(), 0, plain_len))
            }
            SegmentFile::Compressed(file) => Ok(Chunk::Owned(file.whole()?)),
        }
    }

    /// Bytes of the logical file; `plain_len` is a plain file's length.
    pub(crate) fn logical_len(&self, plain_len: u64) -> u64 {
        match self {
            SegmentFile::Plain(_) => plain_len,
            SegmentFile::Compressed(file) => file.logical_len() as u64,
        }
    }

    pub(crate) fn is_compressed(&self) -> bool {
        matches!(self, SegmentFile::Compressed(_))
    }
}

/// Readers that may still read a generation compaction replaced, and the
/// replaced generations' maps they may need (see [`Segments::pin`]).
#[derive(Debug, Default)]
struct Pins {
    /// The epoch a pin taken now gets; a retirement moves it on.
    epoch: u64,
    /// Live pins by the epoch they were taken in.
    live: BTreeMap<u64, usize>,
    /// Maps of replaced generations, with the epoch they were retired in:
    /// kept while a pin from that epoch or before lives.
    retired: Vec<(u64, (u32, u32), Arc<Mmap>)>,
    /// Every generation ever retired: never cached again (a reader that
    /// still reaches one maps it for itself only).
    retired_keys: std::collections::HashSet<(u32, u32)>,
}

impl Pins {
    fn release_unneeded(&mut self) {
        let oldest = self.live.keys().next().copied().unwrap_or(u64::MAX);
        self.retired.retain(|(epoch, _, _)| oldest <= *epoch);
    }
}

/// Held by a reader from before it reads index positions until it is done
/// with them: a generation retired meanwhile stays readable to it.
#[derive(Debug)]
pub(crate) struct Pin {
    pins: Arc<Mutex<Pins>>,
    epoch: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().expect("pins lock");
        if let Some(count) = pins.live.get_mut(&self.epoch) {
            *count -= 1;
            if *count == 0 {
                pins.live.remove(&self.epoch);
            }
        }
        pins.release_unneeded();
    }
}

impl Segments {
    pub(crate) fn new(dir: PathBuf) -> Segments {
        Segments {
            dir,
            maps: RwLock::new(BTreeMap::new()),
            compressed: RwLock::default(),
            blocks: Arc::default(),
            pins: Arc::default(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of generation 0 of `segment` (the only one a segment the
    /// writer appends to has).
    pub(crate) fn path(&self, segment: u32) -> PathBuf {
        segment_path(&self.dir, segment)
    }

    pub(crate) fn path_gen(&self, segment: u32, generation: u32) -> PathBuf {
        segment_path_gen(&self.dir, segment, generation)
    }

    /// Segment numbers present on disk, in order (each once, whatever
    /// generations it has).
    pub(crate) fn list(&self) -> Result<Vec<u32>> {
        let mut list: Vec<u32> = list_segment_files(&self.dir)?.into_iter().map(|(segment, _)| segment).collect();
        list.dedup();
        Ok(list)
    }

    /// Every segment file: (segment, generation), in order.
    pub(crate) fn files(&self) -> Result<Vec<(u32, u32)>> {
        list_segment_files(&self.dir)
    }

    /// A pin: positions read from the index after it stay readable until it
    /// is dropped, even if compaction replaces their generation meanwhile.
    pub(crate) fn pin(&self) -> Pin {
        let mut pins = self.pins.lock().expect("pins lock");
        let epoch = pins.epoch;
        *pins.live.entry(epoch).or_default() += 1;
        Pin { pins: self.pins.clone(), epoch }
    }

    /// Forgets generation `generation` of `segment` once no reader pinned
    /// before now can need it (its file may be removed right after: the
    /// map keeps the bytes for those readers).
    pub(crate) fn retire(&self, segment: u32, generation: u32) {
        let key = (segment, generation);
        // Under the maps' lock throughout, so no reader finds the map in
        // neither place.
        let mut maps = self.maps.write().expect("segment map lock");
        let map = maps.remove(&key);
        self.compressed.write().expect("segment map lock").remove(&key);
        let mut pins = self.pins.lock().expect("pins lock");
        let epoch = pins.epoch;
        pins.epoch += 1;
        pins.retired_keys.insert(key);
        if let Some(map) = map {
            pins.retired.push((epoch, key, map));
        }
        pins.release_unneeded();
        drop(pins);
        drop(maps);
    }

    /// Maps (or re-maps) generation 0 of `segment` so that at least `len`
    /// bytes are readable.
    pub(crate) fn map(&self, segment: u32, len: u64) -> Result<()> {
        self.map_gen(segment, 0, len)
    }

    /// Maps (or re-maps) `segment`'s generation so that at least `len`
    /// bytes are readable.
    pub(crate) fn map_gen(&self, segment: u32, generation: u32, len: u64) -> Result<()> {
        {
            let maps = self.maps.read().expect("segment map lock");
            if maps.get(&(segment, generation)).is_some_and(|map| map.len() as u64 >= len) {
                return Ok(());
            }
        }
        let path = self.path_gen(segment, generation);
        let file = File::open(&path).map_err(StoreError::io(format!("open {}", path.display())))?;
        let map_len = len.max(SEGMENT_HEADER_BYTES);
        // The map may extend past the file's end (the active segment grows);
        // only bytes below the committed end are ever read.
        #[allow(unsafe_code)]
        // SAFETY: below the committed end, segment files never change while
        // mapped: the writer only appends, and cuts only what lies past the
        // committed end (a failed group, the zeroes written ahead); other
        // truncation happens in recovery before any map exists. Compaction
        // writes a new file and never changes an old one. Readers only touch
        // offsets the index published after they were written, or below the
        // committed end they read before the file's length.
        let map = unsafe { MmapOptions::new().len(map_len as usize).map(&file) }
            .map_err(StoreError::io(format!("map {}", path.display())))?;
        let mut maps = self.maps.write().expect("segment map lock");
        if !self.is_retired((segment, generation)) {
            maps.insert((segment, generation), Arc::new(map));
        }
        Ok(())
    }

    fn is_retired(&self, key: (u32, u32)) -> bool {
        self.pins.lock().expect("pins lock").retired_keys.contains(&key)
    }

    /// Maps a file for one reader, without caching it.
    fn map_once(&self, segment: u32, generation: u32) -> Result<Arc<Mmap>> {
        let path = self.path_gen(segment, generation);
        let file = File::open(&path).map_err(StoreError::io(format!("open {}", path.display())))?;
        #[allow(unsafe_code)]
        // SAFETY: as in `map_gen`: a file compaction replaced is never changed.
        let map =
            unsafe { MmapOptions::new().map(&file) }.map_err(StoreError::io(format!("map {}", path.display())))?;
        Ok(Arc::new(map))
    }

    /// Forgets the maps of all segments (used before truncation in recovery).
    pub(crate) fn unmap_all(&self) {
        self.maps.write().expect("segment map lock").clear();
    }

    /// The bytes of `segment`'s generation, as mapped.
    pub(crate) fn bytes(&self, segment: u32, generation: u32) -> Result<Arc<Mmap>> {
        let key = (segment, generation);
        if let Some(map) = self.maps.read().expect("segment map lock").get(&key) {
            return Ok(map.clone());
        }
        {
            let pins = self.pins.lock().expect("pins lock");
            if let Some((_, _, map)) = pins.retired.iter().find(|(_, k, _)| *k == key) {
                return Ok(map.clone());
            }
            if pins.retired_keys.contains(&key) {
                drop(pins);
                return self.map_once(segment, generation);
            }
        }
        let path = self.path_gen(segment, generation);
        let len = fs::metadata(&path).map_err(StoreError::io(format!("stat {}", path.display())))?.len();
        if len < SEGMENT_HEADER_BYTES {
            // Mapped, its header would be read past the file's end: a SIGBUS.
            return Err(corrupt(segment, 0, "shorter than a segment's header"));
        }
        self.map_gen(segment, generation, len)?;
        let cached = self.maps.read().expect("segment map lock").get(&key).cloned();
        if let Some(map) = cached {
            return Ok(map);
        }
        // Retired meanwhile: from the retired maps (its file may be gone),
        // else mapped for this reader alone.
        let retired =
            self.pins.lock().expect("pins lock").retired.iter().find(|(_, k, _)| *k == key).map(|e| e.2.clone());
        match retired {
            Some(map) => Ok(map),
            None => self.map_once(segment, generation),
        }
    }

    /// `segment`'s generation as a file to read, plain or compressed.
    pub(crate) fn file(&self, segment: u32, generation: u32) -> Result<SegmentFile> {
        if let Some(file) = self.compressed.read().expect("segment map lock").get(&(segment, generation)) {
            return Ok(SegmentFile::Compressed(file.clone()));
        }
        let map = self.bytes(segment, generation)?;
        if !compressed::is_compressed(&map[..map.len().min(SEGMENT_HEADER_BYTES as usize)]) {
            return Ok(SegmentFile::Plain(map));
        }
        let len = map.len();
        let file = Arc::new(Compressed::open(map, len, (segment, generation), self.blocks.clone())?);
        // Checked under the lock it is cached under, so a retirement between
        // the check and the insert cannot be missed.
        let mut cached = self.compressed.write().expect("segment map lock");
        if !self.is_retired((segment, generation)) {
            cached.insert((segment, generation), file.clone());
        }
        Ok(SegmentFile::Compressed(file))
    }

    /// Reads and decodes the event at `pos`.
    pub(crate) fn read_event(&self, pos: Pos) -> Result<Event> {
        self.read_event_with(pos, &mut codec::Decoder::full())
    }

    /// Reads and decodes the event at `pos`, sharing `decoder`'s topic cache
    /// across the events of a scan.
    #[inline]
    pub(crate) fn read_event_with(&self, pos: Pos, decoder: &mut codec::Decoder) -> Result<Event> {
        let start = pos.offset as usize;
        let end = start + FRAME_HEADER_BYTES + pos.len as usize;
        let key = (pos.segment, pos.generation);
        let window = match (&decoder.map, &decoder.window) {
            // The file of the previous event, mapped far enough: no lookup.
            (Some(map), _) if decoder.map_segment == Some(key) && map.len() >= end => {
                Window { base: 0, chunk: Chunk::Map(map.clone(), 0, map.len()) }
            }
            // The decompressed block of the previous event.
            (_, Some((window_key, window))) if *window_key == key && window.covers(start, end) => {
                decoder.window_reused = true;
                window.clone()
            }
            _ => match self.file(pos.segment, pos.generation)? {
                SegmentFile::Plain(map) => {
                    decoder.map = Some(map.clone());
                    decoder.map_segment = Some(key);
                    let len = map.len();
                    Window { base: 0, chunk: Chunk::Map(map, 0, len) }
                }
                SegmentFile::Compressed(file) => {
                    let (base, chunk) = file.window(start, end)?;
                    let window = Window { base, chunk };
                    // Payloads are copied out of the block (large ones viewed in it).
                    decoder.map = None;
                    decoder.map_segment = None;
                    decoder.window = Some((key, window.clone()));
                    decoder.window_reused = false;
                    window
                }
            },
        };
        let frame =
            window.at(start, end).ok_or_else(|| corrupt(pos.segment, pos.offset, "position is past the end"))?;
        let body = match codec::unframe(frame) {
            Ok(Some(body)) => body,
            Ok(None) => return Err(corrupt(pos.segment, pos.offset, "event frame is incomplete")),
            Err(detail) => return Err(corrupt(pos.segment, pos.offset, &detail)),
        };
        codec::decode_event_with(body, decoder).map_err(|detail| corrupt(pos.segment, pos.offset, &detail))
    }

    /// The body of the event frame at `pos`, crc checked, as a view of what
    /// `decoder` now holds: the map of its plain file, or the decompressed
    /// block of a compressed one (kept there for the next event).
    pub(crate) fn frame_body<'d>(&self, pos: Pos, decoder: &'d mut codec::Decoder) -> Result<&'d [u8]> {
        let start = pos.offset as usize;
        let end = start + FRAME_HEADER_BYTES + pos.len as usize;
        let key = (pos.segment, pos.generation);
        let in_map = decoder.map_segment == Some(key) && decoder.map.as_ref().is_some_and(|map| map.len() >= end);
        let in_window =
            !in_map && decoder.window.as_ref().is_some_and(|(held, window)| *held == key && window.covers(start, end));
        if !in_map && !in_window {
            match self.file(pos.segment, pos.generation)? {
                SegmentFile::Plain(map) => {
                    decoder.map = Some(map);
                    decoder.map_segment = Some(key);
                }
                SegmentFile::Compressed(file) => {
                    let (base, chunk) = file.window(start, end)?;
                    decoder.map = None;
                    decoder.map_segment = None;
                    decoder.window = Some((key, Window { base, chunk }));
                }
            }
        }
        // Whichever holds this file (the other may hold another one).
        let frame = match (&decoder.map, &decoder.window) {
            (Some(map), _) if decoder.map_segment == Some(key) => map.get(start..end),
            (_, Some((held, window))) if *held == key => window.at(start, end),
            _ => None,
        };
        let frame = frame.ok_or_else(|| corrupt(pos.segment, pos.offset, "position is past the end"))?;
        match codec::unframe(frame) {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(corrupt(pos.segment, pos.offset, "event frame is incomplete")),
            Err(detail) => Err(corrupt(pos.segment, pos.offset, &detail)),
        }
    }
}

/// A `Corrupt` error naming a place in the log.
pub(crate) fn corrupt(segment: u32, offset: u32, detail: &str) -> StoreError {
    StoreError::Corrupt { location: format!("log segment {segment:010} offset {offset}"), detail: detail.to_owned() }
}

pub(crate) fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.seg"))
}

pub(crate) fn segment_path_gen(dir: &Path, segment: u32, generation: u32) -> PathBuf {
    match generation {
        0 => segment_path(dir, segment),
        generation => dir.join(format!("{segment:010}.{generation}.seg")),
    }
}

/// Segment numbers in `dir`, in order, each once.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u32>> {
    let mut list: Vec<u32> = list_segment_files(dir)?.into_iter().map(|(segment, _)| segment).collect();
    list.dedup();
    Ok(list)
}

/// Segment files in `dir` as (segment, generation), in order.
pub(crate) fn list_segment_files(dir: &Path) -> Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(StoreError::io(format!("list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list log directory"))?;
        let name = entry.file_name();
        if let Some(file) = name.to_str().and_then(parse_segment_name) {
            out.push(file);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// `<segment>.seg` → (segment, 0); `<segment>.<gen>.seg` → (segment, gen).
fn parse_segment_name(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".seg")?;
    let (segment, generation) = match stem.split_once('.') {
        Some((segment, generation)) => (segment, generation.parse::<u32>().ok().filter(|g| *g > 0)?),
        None => (stem, 0),
    };
    (segment.len() == 10).then_some(())?;
    Some((segment.parse().ok()?, generation))
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
