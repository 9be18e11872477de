//! numpy's legacy `RandomState` (MT19937), as far as the metric references use it.
//!
//! torch-fidelity draws KID's subsets with `np.random.RandomState(seed).choice(n, m,
//! replace=False)` and clean-fid with the global `np.random.choice`, which is the same generator.
//! Drawing the same subsets is what makes our KID equal theirs on the same features, not just
//! close in distribution, so this module reproduces the three layers involved bit for bit:
//! the Mersenne Twister seeded by an integer (`init_genrand`), numpy's `random_interval`
//! (masked rejection sampling) and its Fisher-Yates `shuffle`, on which `permutation` and
//! `choice(replace=False)` are built. The confidence intervals use the same generator, so every random
//! choice of an evaluation follows from its seeds.

const N: usize = 624;
const M: usize = 397;

/// `np.random.RandomState(seed)`.
#[derive(Clone)]
pub struct RandomState {
    key: [u32; N],
    pos: usize,
}

impl std::fmt::Debug for RandomState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RandomState")
            .field("pos", &self.pos)
            .finish()
    }
}

impl RandomState {
    /// Seeded as numpy seeds from an integer in `0..2^32`.
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; N];
        key[0] = seed;
        for i in 1..N {
            key[i] = 1_812_433_253u32
                .wrapping_mul(key[i - 1] ^ (key[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { key, pos: N }
    }

    fn refill(&mut self) {
        for i in 0..N {
            let y = (self.key[i] & 0x8000_0000) | (self.key[(i + 1) % N] & 0x7fff_ffff);
            let mut next = self.key[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.key[i] = next;
        }
        self.pos = 0;
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == N {
            self.refill();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn next_u64(&mut self) -> u64 {
        (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32())
    }

    /// A uniform integer in `0..=max`, numpy's `random_interval`: draws masked to the
    /// smallest `2^k - 1` covering `max`, rejected until one is in range.
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        loop {
            let value = if max <= u64::from(u32::MAX) {
                u64::from(self.next_u32()) & mask
            } else {
                self.next_u64() & mask
            };
            if value <= max {
                return value;
            }
        }
    }

    /// `permutation(n)`: `arange(n)` shuffled from the last element down.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut out: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u64) as usize;
            out.swap(i, j);
        }
        out
    }

    /// `choice(n, m, replace=False)` without probabilities: the first `m` of a permutation.
    pub fn choice_without_replacement(&mut self, n: usize, m: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(m);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mersenne_twister_matches_its_reference_output() {
        // The reference implementation's init_genrand(5489) stream (mt19937ar.c): 3499211612,
        // 581869302, ...; numpy's RandomState(5489).randint(2**32, dtype=uint64) gives the same.
        let mut r = RandomState::new(5489);
        assert_eq!(r.next_u32(), 3_499_211_612);
        assert_eq!(r.next_u32(), 581_869_302);
        assert_eq!(r.next_u32(), 3_890_346_734);
    }

    #[test]
    fn a_permutation_holds_every_index_once() {
        let mut p = RandomState::new(3).permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
        assert_eq!(
            RandomState::new(3).choice_without_replacement(10, 4).len(),
            4
        );
    }
}
