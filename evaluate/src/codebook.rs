//! Codebook usage as LlamaGen reports it: the share of the codebook among the most recent
//! 65536 codes the quantizer produced.
//!
//! LlamaGen keeps those codes in a buffer that starts as 65536 zeros, so code 0 counts as used
//! until 65536 real codes have pushed the zeros out. [`CodebookUsage::llamagen`] reproduces that
//! (the figure to compare with the paper's tables); [`CodebookUsage::seen`] counts only real codes.

use std::collections::VecDeque;

use crate::EvalError;

/// LlamaGen's window length.
pub const WINDOW: usize = 65536;

#[derive(Debug, Clone)]
pub struct CodebookUsage {
    codebook_size: usize,
    window: VecDeque<u32>,
    capacity: usize,
    /// How often each code occurs in the window.
    counts: Vec<u32>,
    distinct: usize,
    /// Which codes were ever seen (for [`Self::seen_fraction`]).
    ever: Vec<bool>,
    ever_distinct: usize,
}

impl CodebookUsage {
    /// LlamaGen's definition: a window of 65536 codes that starts full of zeros.
    pub fn llamagen(codebook_size: usize) -> Self {
        let mut usage = Self::empty(codebook_size, WINDOW);
        usage.window.extend(std::iter::repeat_n(0, WINDOW));
        usage.counts[0] = WINDOW as u32;
        usage.distinct = 1;
        usage
    }

    /// A window of `capacity` codes that starts empty.
    pub fn seen(codebook_size: usize, capacity: usize) -> Self {
        Self::empty(codebook_size, capacity.max(1))
    }

    fn empty(codebook_size: usize, capacity: usize) -> Self {
        Self {
            codebook_size,
            window: VecDeque::with_capacity(capacity),
            capacity,
            counts: vec![0; codebook_size.max(1)],
            distinct: 0,
            ever: vec![false; codebook_size.max(1)],
            ever_distinct: 0,
        }
    }

    /// Adds codes in the order the quantizer produced them.
    pub fn push(&mut self, codes: &[u32]) -> Result<(), EvalError> {
        for &code in codes {
            let c = code as usize;
            if c >= self.codebook_size {
                return Err(EvalError::Invalid(format!(
                    "code {code} outside a codebook of {}",
                    self.codebook_size
                )));
            }
            if self.window.len() == self.capacity
                && let Some(old) = self.window.pop_front()
            {
                let slot = &mut self.counts[old as usize];
                *slot -= 1;
                if *slot == 0 {
                    self.distinct -= 1;
                }
            }
            self.window.push_back(code);
            if self.counts[c] == 0 {
                self.distinct += 1;
            }
            self.counts[c] += 1;
            if !self.ever[c] {
                self.ever[c] = true;
                self.ever_distinct += 1;
            }
        }
        Ok(())
    }

    /// Distinct codes in the window over the codebook size (LlamaGen's `codebook_usage`).
    pub fn usage(&self) -> f64 {
        self.distinct as f64 / self.codebook_size as f64
    }

    /// Distinct codes ever pushed over the codebook size.
    pub fn seen_fraction(&self) -> f64 {
        self.ever_distinct as f64 / self.codebook_size as f64
    }

    /// The codes in the window, oldest first. A [`CodebookUsage::seen`] window of [`WINDOW`]
    /// codes holds all that any later window keeps of its codes, so processes that each
    /// quantized a contiguous share of a set get the set's usage by pushing their windows, in
    /// the order of their shares, into one [`CodebookUsage::llamagen`].
    pub fn window(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.window.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_zeros_count_until_pushed_out() {
        let mut u = CodebookUsage::llamagen(16);
        assert_eq!(u.usage(), 1.0 / 16.0);
        u.push(&[5, 6, 7]).unwrap();
        assert_eq!(u.usage(), 4.0 / 16.0, "zeros plus three codes");
        assert_eq!(u.seen_fraction(), 3.0 / 16.0);
        let fill: Vec<u32> = (0..WINDOW as u32).map(|i| 1 + i % 3).collect();
        u.push(&fill).unwrap();
        assert_eq!(
            u.usage(),
            3.0 / 16.0,
            "only codes 1, 2, 3 remain in the window"
        );
        assert_eq!(u.seen_fraction(), 6.0 / 16.0);
    }

    #[test]
    fn shares_pushed_through_their_windows_give_the_whole_usage() {
        // Shares shorter and longer than the window, in order; the codes drift, so that which
        // ones remain in the window decides the figure.
        let lengths = [1_000, 70_000, 3, 65_536, 20_000];
        let size = 16384;
        let mut whole = CodebookUsage::llamagen(size);
        let mut merged = CodebookUsage::llamagen(size);
        let (mut t, mut noise) = (0u32, 0u32);
        for n in lengths {
            let codes: Vec<u32> = (0..n)
                .map(|_| {
                    t += 1;
                    noise = noise.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (t / 8 + (noise >> 16) % 64) % size as u32
                })
                .collect();
            whole.push(&codes).unwrap();
            let mut share = CodebookUsage::seen(size, WINDOW);
            share.push(&codes).unwrap();
            assert_eq!(share.window().len(), n.min(WINDOW));
            merged.push(&share.window().collect::<Vec<_>>()).unwrap();
            assert_eq!(merged.usage(), whole.usage(), "after a share of {n}");
        }
        assert!(
            whole.usage() > 0.4 && whole.usage() < 0.6,
            "{}",
            whole.usage()
        );
    }

    #[test]
    fn a_small_window_forgets() {
        let mut u = CodebookUsage::seen(10, 4);
        u.push(&[1, 2, 3, 4]).unwrap();
        assert_eq!(u.usage(), 0.4);
        u.push(&[4, 4, 4, 4]).unwrap();
        assert_eq!(u.usage(), 0.1);
        assert!(u.push(&[10]).is_err());
    }
}
