//! The event log: append-only segment files of CRC-framed records.
//!
//! `codec` encodes records, `segment` manages the files and reads them,
//! `writer` is the single writer with group commit, `recovery` scans the tail
//! on open, `ahead` writes zeroes past the log's end for the writer's
//! groups to land on. Only `writer` appends to the log; only `recovery`
//! cuts records from it (the writer cuts a failed group and its zeroes).

pub(crate) mod ahead;
pub(crate) mod codec;
pub(crate) mod compressed;
pub(crate) mod crc;
pub(crate) mod recovery;
pub(crate) mod segment;
pub(crate) mod writer;
