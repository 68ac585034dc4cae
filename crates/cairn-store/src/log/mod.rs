//! The event log: append-only segment files of CRC-framed records.
//!
//! `codec` encodes records, `segment` manages the files and reads them,
//! `writer` is the single writer with group commit, `recovery` scans the tail
//! on open. Only `writer` appends to the log; only `recovery` truncates it.

pub(crate) mod ahead;
pub(crate) mod codec;
pub(crate) mod compressed;
pub(crate) mod crc;
pub(crate) mod recovery;
pub(crate) mod segment;
pub(crate) mod writer;
