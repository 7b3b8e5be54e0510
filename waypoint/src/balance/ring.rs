//! Consistent-hash ring (Ketama style) over endpoints, for `ConsistentHash` balancing.
//!
//! Each endpoint owns `VNODES` points on a 64-bit ring, placed by hashing its stable key
//! (`workload|addr`). A request key is hashed onto the ring and served by the next point
//! clockwise. Adding or removing one of n endpoints moves only the keys whose next point
//! changes: about 1/n of them. The hash is FNV-1a finished with murmur3's fmix64, fixed across
//! builds and processes, so every waypoint replica maps a key to the same endpoint.

/// Points per endpoint: enough for ±10% load spread, small enough to rebuild on every change.
const VNODES: u32 = 160;

#[derive(Clone, Debug, Default)]
pub(crate) struct Ring {
    /// (point, index into the endpoint list), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// Builds the ring for endpoints identified by `keys` (index i = endpoint i).
    pub(crate) fn build<'a>(keys: impl Iterator<Item = &'a str>) -> Ring {
        let mut points = Vec::new();
        for (i, key) in keys.enumerate() {
            for v in 0..VNODES {
                points.push((hash_parts(&[key.as_bytes(), b"#", &v.to_be_bytes()]), i));
            }
        }
        // Ties (practically impossible) are broken by index so the order is deterministic.
        points.sort_unstable();
        Ring { points }
    }

    /// The first endpoint clockwise from `key`'s hash for which `usable` holds.
    pub(crate) fn lookup(&self, key: &[u8], usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash_parts(&[key]);
        let start = self.points.partition_point(|&(p, _)| p < h);
        let n = self.points.len();
        (0..n)
            .map(|i| self.points[(start + i) % n].1)
            .find(|&idx| usable(idx))
    }
}

fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}
