//! Deterministic content: byte `i` of object `seed` is a function of
//! `(seed, i)` alone.

use sha2::{Digest, Sha256};

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the bytes of object `seed` starting at `offset`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = mix(seed.rotate_left(17) ^ (pos / 8)).to_le_bytes();
        let within = (pos % 8) as usize;
        let n = (8 - within).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[within..within + n]);
        i += n;
        pos += n as u64;
    }
}

/// The first `size` bytes of object `seed`.
pub fn bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    fill(seed, 0, &mut v);
    v
}

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_matches_the_whole() {
        let whole = bytes(7, 1000);
        for (start, len) in [(0, 1), (3, 17), (8, 8), (999, 1), (5, 995)] {
            let mut part = vec![0u8; len];
            fill(7, start as u64, &mut part);
            assert_eq!(part, whole[start..start + len]);
        }
        assert_ne!(bytes(7, 64), bytes(8, 64));
    }
}
