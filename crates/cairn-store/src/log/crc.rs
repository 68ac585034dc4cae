//! CRC-32C of event frames. The `crc32c` crate runs one chain of `crc32`
//! instructions for buffers under 768 bytes, and each depends on the last
//! (three cycles apiece), while a typical event frame is 100-700 bytes and
//! every read of an event checks one. Here such a buffer is cut into three
//! equal lanes whose chains can run side by side, then joined with one
//! carry-less multiply per lane, and read with unaligned loads (no byte-wise
//! run up to an 8-byte boundary). On this machine's AMD EPYC, whose `crc32`
//! is not pipelined, that is 1.55x the crate at 64 bytes, 1.16x at 190 and
//! even from 400 bytes (`cairn-bench crc`); on CPUs that pipeline `crc32`
//! the lanes overlap too. Anything else goes to the crate.
//!
//! Joining: with `crc32_u64(c, v)` the register after lane B, started from
//! zero, is `reg(A ‖ B) = reg(A) · x^(8·|B|) + reg₀(B) mod P`. In the
//! reflected bit order the instruction uses, `clmul(r, k)` followed by
//! `crc32_u64(0, ·)` gives `r · k · x^33 mod P`, so shifting a register by
//! `n` bytes multiplies it by the constant `x^(8n − 33) mod P`.

/// Shortest buffer cut into lanes (one word per lane).
const LANES_MIN: usize = 24;
/// From here the crate's own three-lane code takes over.
const LANES_MAX: usize = 768;

/// CRC-32C (Castagnoli) of `bytes`, the same value as `crc32c::crc32c`.
#[inline]
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if (LANES_MIN..LANES_MAX).contains(&bytes.len())
        && std::arch::is_x86_feature_detected!("sse4.2")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
    {
        // SAFETY: the two CPU features it is compiled for were just detected.
        #[allow(unsafe_code)]
        return unsafe { x86::three_lanes(bytes) };
    }
    crc32c::crc32c(bytes)
}

/// The CRC-32C polynomial, without its x^32 term.
const POLY: u64 = 0x1EDC_6F41;

/// `x^e mod P`, bit-reflected to the order the `crc32` instruction uses.
const fn x_pow_mod(e: u32) -> u32 {
    let mut m: u64 = 1;
    let mut i = 0;
    while i < e {
        m <<= 1;
        if m & (1 << 32) != 0 {
            m ^= (1 << 32) | POLY;
        }
        i += 1;
    }
    (m as u32).reverse_bits()
}

/// For lanes of `8·w` bytes (index `w`): the constants that shift a
/// register by one lane and by two.
const SHIFTS: [(u32, u32); LANES_MAX / 24] = {
    let mut table = [(0, 0); LANES_MAX / 24];
    let mut w = 1;
    while w < table.len() {
        let bits = 64 * w as u32;
        table[w] = (x_pow_mod(bits - 33), x_pow_mod(2 * bits - 33));
        w += 1;
    }
    table
};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_clmulepi64_si128, _mm_crc32_u8, _mm_crc32_u64, _mm_cvtsi64_si128, _mm_cvtsi128_si64};

    fn word(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    /// `register · k · x^33 mod P`.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    fn shift(register: u64, k: u32) -> u64 {
        let product = _mm_clmulepi64_si128::<0>(_mm_cvtsi64_si128(register as i64), _mm_cvtsi64_si128(k as i64));
        _mm_crc32_u64(0, _mm_cvtsi128_si64(product) as u64)
    }

    /// For `LANES_MIN <= bytes.len() < LANES_MAX`.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    pub(super) fn three_lanes(bytes: &[u8]) -> u32 {
        let words = bytes.len() / 24;
        let lane = 8 * words;
        let (mut a, mut b, mut c) = (u64::from(u32::MAX), 0u64, 0u64);
        for i in (0..lane).step_by(8) {
            a = _mm_crc32_u64(a, word(bytes, i));
            b = _mm_crc32_u64(b, word(bytes, lane + i));
            c = _mm_crc32_u64(c, word(bytes, 2 * lane + i));
        }
        let (one, two) = super::SHIFTS[words];
        let mut crc = shift(a, two) ^ shift(b, one) ^ c;
        let mut at = 3 * lane;
        while at + 8 <= bytes.len() {
            crc = _mm_crc32_u64(crc, word(bytes, at));
            at += 8;
        }
        let mut crc = crc as u32;
        for &byte in &bytes[at..] {
            crc = _mm_crc32_u8(crc, byte);
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_crate_at_every_length() {
        // A fixed pseudo-random buffer: lengths around each lane boundary
        // and every length the lanes serve, at every alignment.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..2048 + 8)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        #[cfg(target_arch = "x86_64")]
        assert!(
            std::arch::is_x86_feature_detected!("sse4.2") && std::arch::is_x86_feature_detected!("pclmulqdq"),
            "this test is meant to exercise the three lanes"
        );
        for start in 0..8 {
            for len in 0..1100 {
                let bytes = &data[start..start + len];
                assert_eq!(crc32c(bytes), crc32c::crc32c(bytes), "length {len} at offset {start}");
            }
        }
        assert_eq!(crc32c(&[0u8; 100]), crc32c::crc32c(&[0u8; 100]));
        assert_eq!(crc32c(&[0xffu8; 300]), crc32c::crc32c(&[0xffu8; 300]));
    }
}
