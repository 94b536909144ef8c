//! Incremental Internet checksum updates (RFC 1624, eqn. 3) for the rewrites the
//! programs do by hand (the IPv4 header checksum, which no offload ever defers). Fields
//! are taken as they sit in memory (loaded natively from the packet's bytes): one's
//! complement sums do not depend on byte order as long as every word is read alike.

/// Folds a 32-bit sum of 16-bit words into 16 bits (end-around carry).
#[inline(always)]
const fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum `sum` after a 16-bit field changes from `old` to `new`.
#[inline(always)]
pub const fn replace2(sum: u16, old: u16, new: u16) -> u16 {
    !fold(!sum as u32 + !old as u32 + new as u32)
}

/// The checksum `sum` after a 32-bit field changes from `old` to `new`.
#[inline(always)]
pub const fn replace4(sum: u16, old: u32, new: u32) -> u16 {
    let old_words = (!(old as u16)) as u32 + (!((old >> 16) as u16)) as u32;
    let new_words = (new as u16) as u32 + ((new >> 16) as u16) as u32;
    !fold(!sum as u32 + old_words + new_words)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full checksum of `words` (RFC 1071).
    fn full(words: &[u16]) -> u16 {
        !fold(words.iter().map(|w| *w as u32).sum())
    }

    #[test]
    fn incremental_updates_match_a_full_recomputation() {
        // An IPv4 header as native words, checksum field (word 5) zero while summing.
        let mut h: [u16; 10] = [
            0x4500, 0x0054, 0x1c46, 0x4000, 0x4001, 0, 0x0a00, 0x010a, 0xcb00, 0x710a,
        ];
        h[5] = full(&h);
        for (old_src, new_src) in [
            (0x010a_0a00u32, 0x0a00_0a00u32),
            (0, u32::MAX),
            (u32::MAX, 1),
        ] {
            let mut g = h;
            (g[6], g[7]) = (old_src as u16, (old_src >> 16) as u16);
            g[5] = 0;
            let sum = full(&g);
            (g[6], g[7]) = (new_src as u16, (new_src >> 16) as u16);
            let want = full(&g);
            assert_eq!(
                replace4(sum, old_src, new_src),
                want,
                "{old_src:x} -> {new_src:x}"
            );
            g[7] = 0xffff;
            g[5] = 0;
            let want2 = full(&g);
            assert_eq!(replace2(want, (new_src >> 16) as u16, 0xffff), want2);
        }
    }
}
