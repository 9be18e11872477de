//! Speculative Jacobi decoding (SJD: Teng et al., "Accelerating Auto-regressive Text-to-Image
//! Generation with Training-free Speculative Jacobi Decoding", arXiv 2410.01699): several image
//! tokens per forward pass, with no draft model and no training.
//!
//! Each pass feeds a window of W positions per sequence: its last accepted token and W - 1 draft
//! tokens. The pass yields the model's distribution p_j at every window column; the drafts are
//! then verified left to right as speculative sampling verifies them, draft d_j kept with
//! probability min(1, p_j(d_j) / q_j(d_j)), where q_j is the distribution d_j was drawn from.
//! At the first rejection a token is drawn from the residual max(0, p_j - q_j) (normalized); when
//! every draft is kept, the last column's p gives one more token. So a pass accepts between 1
//! and W tokens. The drafts still open are redrawn from the p of this pass (the Jacobi
//! iteration: each draft is sampled given the drafts before it), the window slides past the
//! accepted tokens, and the positions it newly covers start from uniformly random tokens (their
//! q puts all its mass on the token).
//!
//! As in speculative sampling, a kept or corrected token follows exactly the distribution plain
//! decoding samples it from (p given every accepted token before it) whatever q was, since each
//! draft was drawn from its q independently of what decides its verification. The reference
//! implementation advances the whole batch by its least accepted count and verifies a token
//! that one row had accepted again in the next pass, which biases that row; here every
//! sequence advances by its own count (each writes its keys at its own positions, see
//! [`Gpt::decode_rows`]), so nothing is verified twice, and a sample depends on its seed and
//! condition only, not on the batch it ran in.
//!
//! Randomness comes from each sequence's own stream ([`Uniforms`]), a fixed number of draws per
//! pass: the correction, then the W - 1 tests, the W Jacobi draws and the W - 1 new drafts. A
//! window of 1 draws only the correction, from p itself, which makes it plain decoding: the same
//! tokens for the same seeds.

use tch::{Kind, Tensor};

use crate::ModelError;
use crate::generate::{Sampling, Uniforms, filter_logits, guide, inverse_cdf};
use crate::gpt::{Gpt, KvCache};

/// How a speculative generation went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JacobiStats {
    /// Forward passes after the prefill, until every sequence of the batch was complete.
    pub passes: i64,
    /// Per sequence: the passes it took (plain decoding takes block_size - 1).
    pub passes_per_sample: Vec<i64>,
}

impl JacobiStats {
    /// Plain decoding's forward passes over SJD's, averaged over the samples: the paper's
    /// "step compression".
    pub fn step_compression(&self, block_size: i64) -> f64 {
        if self.passes_per_sample.is_empty() {
            return 1.0;
        }
        let mean =
            self.passes_per_sample.iter().sum::<i64>() as f64 / self.passes_per_sample.len() as f64;
        (block_size - 1) as f64 / mean.max(1.0)
    }
}

/// Decodes every image token after the first by speculative Jacobi decoding.
///
/// `cache` holds the prefill (of the doubled batch when guided); first: [B, 1], the token
/// sampled from the prefix's last position. The window is `sampling.jacobi_window` positions
/// per pass (at least 1; more than block_size - 1 are never needed, so it is capped there).
/// Returns codes [B, block_size].
pub(crate) fn decode(
    gpt: &Gpt,
    sampling: &Sampling,
    cache: &mut KvCache,
    rng: &mut Uniforms,
    first: &Tensor,
) -> Result<(Tensor, JacobiStats), ModelError> {
    let n = gpt.config.block_size;
    let w = sampling.jacobi_window.clamp(1, (n - 1).max(1));
    let vocab = gpt.config.vocab_size;
    let prefix = cache.len();
    let last_position = gpt.config.max_len() - 1;
    let device = first.device();
    let b = first.size()[0];
    let guided = sampling.guided();
    let columns = Tensor::arange(w, (Kind::Int64, device)).unsqueeze(0);

    // [B, N + W]: a pass writes its whole window from the sequence's front; what lies past the
    // accepted tokens is overwritten by later passes, and past N it is never read.
    let mut out = Tensor::zeros([b, n + w], (Kind::Int64, device));
    out.narrow(1, 0, 1).copy_(first);
    // [B]: tokens accepted so far.
    let mut front = Tensor::ones([b], (Kind::Int64, device));
    // [B]: the last accepted token, fed at the window's first column.
    let mut last = first.squeeze_dim(1);
    // [B, W - 1] and [B, W - 1, V]: the drafts and the distributions they were drawn from.
    let (mut drafts, mut q) = random_drafts(rng, b, w - 1, vocab);
    let mut passes_per_sample = Tensor::zeros([b], (Kind::Int64, device));
    let mut passes = 0;
    // Every pass accepts at least one token per sequence, so N - 1 passes finish any batch.
    for _ in 0..n - 1 {
        if front.min().int64_value(&[]) >= n {
            break;
        }
        passes += 1;
        passes_per_sample += front.lt(n).to_kind(Kind::Int64);

        // Column j feeds token front + j - 1 at sequence position prefix + front + j - 1 and
        // predicts token front + j. A finished sequence's columns write at the last position,
        // which no query of an unfinished token reads.
        let inputs = Tensor::cat(&[last.unsqueeze(1), drafts.shallow_clone()], 1);
        let positions = (front.unsqueeze(1) + &columns + (prefix - 1)).clamp_max(last_position);
        let logits = gpt.decode_rows(
            &doubled_rows(&inputs, guided),
            &doubled_rows(&positions, guided),
            cache,
        )?;
        let p = probabilities(&logits, sampling, &(front.unsqueeze(1) + &columns));

        // Verify: the drafts kept are the leading run of passed tests.
        let correction_u = rng.draw_n(1).squeeze_dim(1);
        let kept = if w > 1 {
            let u = rng.draw_n(w - 1);
            let index = drafts.unsqueeze(2);
            let pd = p
                .narrow(1, 0, w - 1)
                .gather(2, &index, false)
                .squeeze_dim(2);
            let qd = q.gather(2, &index, false).squeeze_dim(2);
            (u * qd)
                .le_tensor(&pd)
                .to_kind(Kind::Int64)
                .cumprod(1, Kind::Int64)
                .sum_dim_intlist(1, false, Kind::Int64)
        } else {
            Tensor::zeros([b], (Kind::Int64, device))
        };

        // The token at the first rejected column: from the residual, or from p past the last
        // draft (whose q is zero).
        let at = kept.view([b, 1, 1]).expand([b, 1, vocab], false);
        let p_at = p.gather(1, &at, false).squeeze_dim(1);
        let q_at = Tensor::cat(&[&q, &p.narrow(1, 0, 1).zeros_like()], 1)
            .gather(1, &at, false)
            .squeeze_dim(1);
        let residual = (&p_at - q_at).clamp_min(0.0);
        // Rounding can empty the residual where p and q agree; p is then what it approximates.
        let empty = residual.sum_dim_intlist(-1, true, Kind::Double).le(0.0);
        let correction = inverse_cdf(
            &residual.where_self(&empty.logical_not(), &p_at),
            &correction_u,
        );

        let accepted = Tensor::cat(&[&drafts, &correction.unsqueeze(1)], 1).scatter(
            1,
            &kept.unsqueeze(1),
            &correction.unsqueeze(1),
        );
        let _ = out.scatter_(
            1,
            &(front.unsqueeze(1) + &columns).clamp_max(n + w - 1),
            &accepted,
        );

        if w > 1 {
            // Each open draft redrawn from this pass's p at its column; new columns random.
            let jacobi = inverse_cdf(&p, &rng.draw_n(w));
            let (fresh, fresh_q) = random_drafts(rng, b, w - 1, vocab);
            let column = kept.unsqueeze(1) + 1 + columns.narrow(1, 0, w - 1);
            let open = column.lt(w);
            let column = column.clamp_max(w - 1);
            drafts = jacobi.gather(1, &column, false).where_self(&open, &fresh);
            q = p
                .gather(
                    1,
                    &column.unsqueeze(2).expand([b, w - 1, vocab], false),
                    false,
                )
                .where_self(&open.unsqueeze(2), &fresh_q);
        }
        front = front + kept + 1;
        last = correction;
    }
    let passes_per_sample = Vec::<i64>::try_from(&passes_per_sample)?;
    Ok((
        out.narrow(1, 0, n).contiguous(),
        JacobiStats {
            passes,
            passes_per_sample,
        },
    ))
}

/// The rows of a window for both halves of a guided batch: [B, W] -> [2B, W], else as it is.
fn doubled_rows(rows: &Tensor, guided: bool) -> Tensor {
    if guided {
        Tensor::cat(&[rows, rows], 0)
    } else {
        rows.shallow_clone()
    }
}

/// The distribution plain decoding samples each window column from: guidance (while the
/// guidance interval lasts for that token), temperature, top-k and top-p, as
/// [`crate::generate::sample`] applies them. logits: [B or 2B, W, V]; token: [B, W], the index
/// of the token each column predicts. Returns [B, W, V] f64.
fn probabilities(logits: &Tensor, sampling: &Sampling, token: &Tensor) -> Tensor {
    let (b, w, v) = (token.size()[0], token.size()[1], logits.size()[2]);
    let mixed = if sampling.guided() {
        let flat = logits.reshape([2 * b, w * v]);
        let conditional = flat.narrow(0, 0, b).reshape([b, w, v]);
        let guided = guide(&flat, sampling.cfg_scale).reshape([b, w, v]);
        match sampling.last_guided_step() {
            // Token t is made by decode step t - 1.
            Some(last) => guided.where_self(&(token - 1).le(last).unsqueeze(2), &conditional),
            None => guided,
        }
    } else {
        logits.shallow_clone()
    };
    filter_logits(&mixed.reshape([b * w, v]), sampling)
        .softmax(-1, Kind::Double)
        .reshape([b, w, v])
}

/// `count` uniformly random draft tokens per sequence and the distributions they were drawn
/// from, all mass on the token: ([B, count] int64, [B, count, V] f64).
fn random_drafts(rng: &mut Uniforms, b: i64, count: i64, vocab: i64) -> (Tensor, Tensor) {
    let device = rng.device();
    if count == 0 {
        return (
            Tensor::zeros([b, 0], (Kind::Int64, device)),
            Tensor::zeros([b, 0, vocab], (Kind::Double, device)),
        );
    }
    // u in (0, 1]: ceil(u V) - 1 is uniform over 0..V.
    let tokens = (rng.draw_n(count) * vocab as f64)
        .ceil()
        .to_kind(Kind::Int64)
        .g_sub_scalar(1)
        .clamp(0, vocab - 1);
    let q = Tensor::zeros([b, count, vocab], (Kind::Double, device)).scatter_value(
        2,
        &tokens.unsqueeze(2),
        1.0,
    );
    (tokens, q)
}
