//! Seeded randomness owned by stoker, not by libtorch's global generator:
//! weight initialisation and shuffling must give the same result for the
//! same (job seed, round, partition) whatever else runs in the process.

/// SplitMix64: small, fast, and good enough for shuffles and init.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    #[cfg(test)]
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator for one stream derived from a seed and stream labels
    /// (round, partition, epoch...), so streams do not overlap.
    pub fn derive(seed: u64, labels: &[u64]) -> Self {
        let mut r = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        for &l in labels {
            r.0 ^= l.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            r.0 = r.next_u64();
        }
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// A random permutation of 0..n (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut p: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_labels_differ() {
        let a = Rng::derive(7, &[1, 2]).permutation(50);
        let b = Rng::derive(7, &[1, 2]).permutation(50);
        let c = Rng::derive(7, &[2, 1]).permutation(50);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_stays_in_range() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let v = r.uniform(-0.5, 0.5);
            assert!((-0.5..0.5).contains(&v));
        }
    }
}
