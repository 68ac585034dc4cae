//! Compressed segment files: a generation written by compaction as zstd
//! blocks. Its logical bytes are exactly those of the plain file it stands
//! for (header, then records), so positions and anchors mean the same in
//! both; only reading differs.
//!
//! ```text
//! header    16 bytes, as a plain segment's, with COMPRESSED in its version
//! blocks    [zstd_len u32 LE][crc32c(zstd bytes) u32 LE][zstd bytes]...
//! index     [count u32 LE], then per block [logical start u64][plain len u32][file offset u64]
//! trailer   [index offset u64 LE][crc32c(index) u32 LE]["CAIRNZIX"]
//! ```
//!
//! A block holds whole event frames (it ends only where a frame or record
//! ends), about `BLOCK_BYTES` of them, so reading one event decompresses one
//! block. Each block's checksum is checked when it is decompressed, and each
//! event's own checksum when it is read, as in a plain file.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use crate::error::Result;
use crate::log::segment::{SEGMENT_HEADER_BYTES, corrupt};

/// Set in the version field of a compressed file's header.
pub(crate) const COMPRESSED: u32 = 1 << 16;
const TRAILER_MAGIC: &[u8; 8] = b"CAIRNZIX";
const TRAILER_BYTES: usize = 20;
const INDEX_ENTRY_BYTES: usize = 20;
/// Plain bytes per block, about (a block ends at the first frame end past it).
pub(crate) const BLOCK_BYTES: usize = 64 * 1024;
/// The most plain bytes a block can hold: `BLOCK_BYTES` and one record.
/// A block index claiming more is damaged (and is not allocated for).
const BLOCK_BYTES_MAX: usize = BLOCK_BYTES + crate::limits::RECORD_BYTES_MAX + 1024;
/// zstd's level. Measured with `cairn-bench compress` (1M JSON-like
/// events): level 3 kept 0.27 of the bytes and scanned at 0.63x the plain
/// rate; -3 keeps 0.32 and scans at 0.71x (faster modes skip most entropy
/// coding, which is what decompression spends its time undoing).
const LEVEL: i32 = -3;
/// Bytes of decompressed blocks kept for the whole store: a scan, its
/// index walk and its reads meet in the same few blocks.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Recently decompressed blocks of every compressed file, within
/// `CACHE_BYTES` (the oldest go first).
#[derive(Debug, Default)]
pub(crate) struct BlockCache {
    inner: Mutex<Cached>,
}

/// Blocks, oldest first, and their bytes.
#[derive(Debug, Default)]
struct Cached {
    blocks: VecDeque<(BlockKey, Arc<Vec<u8>>)>,
    bytes: usize,
}

/// A block of a file: (segment, generation, block number).
type BlockKey = (u32, u32, usize);

impl BlockCache {
    fn get(&self, key: BlockKey) -> Option<Arc<Vec<u8>>> {
        let inner = self.inner.lock().expect("block cache");
        inner.blocks.iter().rev().find(|(k, _)| *k == key).map(|(_, block)| block.clone())
    }

    fn put(&self, key: BlockKey, block: Arc<Vec<u8>>) {
        let mut inner = self.inner.lock().expect("block cache");
        inner.bytes += block.len();
        inner.blocks.push_back((key, block));
        while inner.bytes > CACHE_BYTES && inner.blocks.len() > 1 {
            let (_, old) = inner.blocks.pop_front().expect("not empty");
            inner.bytes -= old.len();
        }
    }
}

thread_local! {
    /// One zstd decompression context per thread, reused across blocks.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Whether a segment header says the file is compressed.
pub(crate) fn is_compressed(header: &[u8]) -> bool {
    header.get(12..16).and_then(|b| b.try_into().ok()).is_some_and(|b| u32::from_le_bytes(b) & COMPRESSED != 0)
}

/// Writes `plain` (a whole segment, header included) compressed into `out`.
/// `cuts` are the offsets, ascending, where a block may end (frame and
/// record ends). Returns the bytes written.
pub(crate) fn encode(plain: &[u8], cuts: &[usize], out: &mut impl Write) -> std::io::Result<u64> {
    let header_len = SEGMENT_HEADER_BYTES as usize;
    let mut header = plain[..header_len].to_vec();
    let version = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) | COMPRESSED;
    header[12..16].copy_from_slice(&version.to_le_bytes());
    out.write_all(&header)?;
    let mut written = header_len as u64;
    let mut index = Vec::new();
    let mut start = header_len;
    let mut cut_at = cuts.iter().copied().filter(|&c| c > header_len).peekable();
    while start < plain.len() {
        // The first cut at or past start + BLOCK_BYTES (or the end).
        let mut end = plain.len();
        while let Some(&cut) = cut_at.peek() {
            cut_at.next();
            if cut >= start + BLOCK_BYTES {
                end = cut;
                break;
            }
        }
        let compressed = zstd::bulk::compress(&plain[start..end], LEVEL)?;
        index.extend_from_slice(&(start as u64).to_le_bytes());
        index.extend_from_slice(&((end - start) as u32).to_le_bytes());
        index.extend_from_slice(&written.to_le_bytes());
        out.write_all(&(compressed.len() as u32).to_le_bytes())?;
        out.write_all(&crc32c::crc32c(&compressed).to_le_bytes())?;
        out.write_all(&compressed)?;
        written += 8 + compressed.len() as u64;
        start = end;
    }
    let index_offset = written;
    let mut index_region = ((index.len() / INDEX_ENTRY_BYTES) as u32).to_le_bytes().to_vec();
    index_region.extend_from_slice(&index);
    out.write_all(&index_region)?;
    out.write_all(&index_offset.to_le_bytes())?;
    out.write_all(&crc32c::crc32c(&index_region).to_le_bytes())?;
    out.write_all(TRAILER_MAGIC)?;
    Ok(index_offset + 4 + index.len() as u64 + TRAILER_BYTES as u64)
}

/// One block of a compressed file.
#[derive(Debug, Clone, Copy)]
struct Block {
    /// Where its plain bytes start in the logical file, and how many.
    start: usize,
    len: usize,
    /// Where its frame (`[zstd_len][crc][zstd bytes]`) starts in the file.
    at: usize,
}

/// An open compressed file.
#[derive(Debug)]
pub(crate) struct Compressed {
    map: Arc<Mmap>,
    segment: u32,
    generation: u32,
    blocks: Vec<Block>,
    cache: Arc<BlockCache>,
}

impl Compressed {
    /// Reads the block index of a compressed file `len` bytes long.
    pub(crate) fn open(
        map: Arc<Mmap>,
        len: usize,
        (segment, generation): (u32, u32),
        cache: Arc<BlockCache>,
    ) -> Result<Compressed> {
        let bad = |detail: &str| corrupt(segment, 0, &format!("compressed segment: {detail}"));
        let bytes = map.get(..len).ok_or_else(|| bad("shorter than its file"))?;
        if len < SEGMENT_HEADER_BYTES as usize + TRAILER_BYTES + 4 {
            return Err(bad("too short"));
        }
        let trailer = &bytes[len - TRAILER_BYTES..];
        if &trailer[12..20] != TRAILER_MAGIC {
            return Err(bad("bad trailer"));
        }
        let index_at = usize::try_from(u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes")))
            .ok()
            .filter(|at| (SEGMENT_HEADER_BYTES as usize..=len - TRAILER_BYTES - 4).contains(at))
            .ok_or_else(|| bad("index offset out of range"))?;
        let index_region = &bytes[index_at..len - TRAILER_BYTES];
        let crc = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
        if crc32c::crc32c(index_region) != crc {
            return Err(bad("block index checksum mismatch"));
        }
        let count = u32::from_le_bytes(index_region[..4].try_into().expect("4 bytes")) as usize;
        let entries = &index_region[4..];
        if entries.len() != count.checked_mul(INDEX_ENTRY_BYTES).ok_or_else(|| bad("index too long"))? {
            return Err(bad("index does not fit"));
        }
        let mut blocks = Vec::with_capacity(count);
        let mut expected_start = SEGMENT_HEADER_BYTES as usize;
        for entry in entries.chunks_exact(INDEX_ENTRY_BYTES) {
            let block = Block {
                start: u64::from_le_bytes(entry[0..8].try_into().expect("8 bytes")) as usize,
                len: u32::from_le_bytes(entry[8..12].try_into().expect("4 bytes")) as usize,
                at: u64::from_le_bytes(entry[12..20].try_into().expect("8 bytes")) as usize,
            };
            if block.start != expected_start || block.at >= index_at || block.len > BLOCK_BYTES_MAX {
                return Err(bad("block index out of order"));
            }
            expected_start = block.start.checked_add(block.len).ok_or_else(|| bad("block index overflows"))?;
            blocks.push(block);
        }
        Ok(Compressed { map, segment, generation, blocks, cache })
    }

    /// Bytes of the logical (plain) file.
    pub(crate) fn logical_len(&self) -> usize {
        self.blocks.last().map_or(SEGMENT_HEADER_BYTES as usize, |b| b.start + b.len)
    }

    /// Block `i`, decompressed (checked against its checksum).
    fn block(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let key = (self.segment, self.generation, i);
        if let Some(bytes) = self.cache.get(key) {
            return Ok(bytes);
        }
        let block = self.blocks[i];
        let bad = |detail: &str| corrupt(self.segment, block.start as u32, &format!("compressed block {i}: {detail}"));
        let header = self.map.get(block.at..block.at + 8).ok_or_else(|| bad("past the end"))?;
        let zlen = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let compressed =
            self.map.get(block.at + 8..(block.at + 8).saturating_add(zlen)).ok_or_else(|| bad("past the end"))?;
        if crc32c::crc32c(compressed) != crc {
            return Err(bad("checksum mismatch"));
        }
        let plain = DECOMPRESSOR
            .with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Decompressor::new()?);
                }
                slot.as_mut().expect("set above").decompress(compressed, block.len)
            })
            .map_err(|error| bad(&error.to_string()))?;
        if plain.len() != block.len {
            return Err(bad("decompressed to the wrong length"));
        }
        let plain = Arc::new(plain);
        self.cache.put(key, plain.clone());
        Ok(plain)
    }

    /// The index of the block holding logical offset `at`.
    fn block_of(&self, at: usize) -> Option<usize> {
        let i = self.blocks.partition_point(|b| b.start + b.len <= at);
        (i < self.blocks.len() && self.blocks[i].start <= at).then_some(i)
    }

    /// Logical bytes `start..end`: a view of one block when they lie in
    /// one, else a copy.
    pub(crate) fn range(&self, start: usize, end: usize) -> Result<Chunk> {
        let bad = || corrupt(self.segment, start as u32, "position past the end of the compressed segment");
        let first = self.block_of(start).ok_or_else(bad)?;
        let block = self.blocks[first];
        if end <= block.start + block.len {
            return Ok(Chunk::Block(self.block(first)?, start - block.start, end - block.start));
        }
        let mut out = Vec::with_capacity(end - start);
        let mut i = first;
        while out.len() < end - start {
            let block = *self.blocks.get(i).ok_or_else(bad)?;
            let bytes = self.block(i)?;
            let from = start.max(block.start) - block.start;
            let to = end.min(block.start + block.len) - block.start;
            out.extend_from_slice(&bytes[from..to]);
            i += 1;
        }
        Ok(Chunk::Owned(out))
    }

    /// The block holding `start` and those after it up to `min_end`: the
    /// logical offset where the returned bytes begin, and the bytes.
    pub(crate) fn window(&self, start: usize, min_end: usize) -> Result<(usize, Chunk)> {
        let bad = || corrupt(self.segment, start as u32, "position past the end of the compressed segment");
        let first = self.block_of(start).ok_or_else(bad)?;
        let block = self.blocks[first];
        if min_end <= block.start + block.len {
            return Ok((block.start, Chunk::Block(self.block(first)?, 0, block.len)));
        }
        let mut last = first;
        while self.blocks[last].start + self.blocks[last].len < min_end {
            last += 1;
            if last == self.blocks.len() {
                return Err(bad());
            }
        }
        let end = self.blocks[last].start + self.blocks[last].len;
        Ok((block.start, self.range(block.start, end)?))
    }

    /// The whole logical file, header included.
    pub(crate) fn whole(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.logical_len().min(1 << 30));
        out.extend_from_slice(&self.map[..SEGMENT_HEADER_BYTES as usize]);
        for i in 0..self.blocks.len() {
            out.extend_from_slice(&self.block(i)?);
        }
        Ok(out)
    }
}

/// Logical bytes of a segment file from `base` on.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub(crate) base: usize,
    pub(crate) chunk: Chunk,
}

impl Window {
    pub(crate) fn covers(&self, start: usize, end: usize) -> bool {
        start >= self.base && end <= self.base + self.chunk.len()
    }

    /// Logical bytes `start..end`, if the window holds them.
    pub(crate) fn at(&self, start: usize, end: usize) -> Option<&[u8]> {
        self.chunk.get(start.checked_sub(self.base)?..end.checked_sub(self.base)?)
    }
}

/// Bytes read from a segment file: a view of its map, a view of a
/// decompressed block, or a copy.
#[derive(Clone)]
pub(crate) enum Chunk {
    Map(Arc<Mmap>, usize, usize),
    Block(Arc<Vec<u8>>, usize, usize),
    Owned(Vec<u8>),
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Map(map, start, end) => &map[*start..*end],
            Chunk::Block(block, start, end) => &block[*start..*end],
            Chunk::Owned(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} bytes)", self.len())
    }
}
