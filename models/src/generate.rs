//! Autoregressive sampling as LlamaGen's `generate`: prefill the condition prefix, then decode
//! one token at a time from the KV cache, with classifier-free guidance and top-k / top-p /
//! temperature filtering. On CUDA the decode step, sampling included, is recorded once as a
//! CUDA graph and replayed for every further token ([`Decoder`]).
//!
//! Randomness is per sample: each row of the batch draws its tokens from its own seeded stream
//! (inverse-CDF sampling with splitmix64 uniforms, computed on the model's device so that no
//! step waits on the host), so a sample depends only on its seed and
//! condition, not on the batch it ran in, the device, other threads using libtorch's global
//! generator, or a resumed run. LlamaGen draws with `torch.multinomial` from the global
//! generator instead; the distribution sampled is the same, the particular draws are not.

use tch::{Device, Kind, Tensor};

use crate::ModelError;
use crate::cuda_graph::{self, CudaGraph};
use crate::gpt::{Gpt, KvCache};
use crate::jacobi::{self, JacobiStats};

/// Sampling settings; the defaults are the paper's FID settings for class-conditional
/// ImageNet (guidance 1.5 for LlamaGen's released B/L models, no top-k/top-p, temperature 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Guidance scale s in l_u + s (l_c - l_u); at or below 1.0 the batch is not doubled and
    /// the conditional logits are used alone, as in LlamaGen.
    pub cfg_scale: f64,
    /// Stop guiding after this many decoded tokens (`-1`: guide every token).
    pub cfg_interval: i64,
    /// Divides the logits; values below 1e-5 are raised to 1e-5 (near-greedy).
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 keeps the whole vocabulary.
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches p; 1.0 keeps all.
    pub top_p: f64,
    /// Speculative Jacobi decoding ([`crate::jacobi`]) over this many positions per forward
    /// pass; 0 decodes one token per pass as LlamaGen does. The tokens follow the same
    /// distribution, not the same draws, except at 1, which draws what plain decoding does.
    pub jacobi_window: i64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            cfg_scale: 1.5,
            cfg_interval: -1,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            jacobi_window: 0,
        }
    }
}

impl Sampling {
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Input(m));
        if !self.cfg_scale.is_finite() || self.cfg_scale < 0.0 {
            return bad(format!("cfg scale must be >= 0, got {}", self.cfg_scale));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if self.top_k < 0 {
            return bad(format!("top-k must be >= 0, got {}", self.top_k));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p must lie in (0, 1], got {}", self.top_p));
        }
        if self.jacobi_window < 0 {
            return bad(format!(
                "the Jacobi window must be >= 0, got {}",
                self.jacobi_window
            ));
        }
        if self.cfg_interval < -1 {
            return bad(format!(
                "cfg interval must be >= -1, got {}",
                self.cfg_interval
            ));
        }
        Ok(())
    }

    pub(crate) fn guided(&self) -> bool {
        self.cfg_scale > 1.0
    }

    /// The last decode step still guided (step i makes token i + 1, the prefill's token
    /// being token 0); None when every step is.
    pub(crate) fn last_guided_step(&self) -> Option<i64> {
        (self.cfg_interval > -1).then_some(self.cfg_interval)
    }
}

/// How the decode loop runs; every choice samples the same tokens for the same seeds, up to
/// floating-point rounding in the attention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decoder {
    /// [`Decoder::CudaGraph`] on a CUDA device where this process can capture graphs (unless
    /// `LLAMAGEN_CUDA_GRAPHS=0`), else [`Decoder::Eager`]; a GPU that falls back says why in
    /// the log. A capture that fails continues as [`Decoder::Static`], with a warning, where
    /// an explicit [`Decoder::CudaGraph`] fails the generation.
    #[default]
    Auto,
    /// One step per token over the filled part of the cache, each kernel launched from the
    /// host: the reference path.
    Eager,
    /// [`Gpt::decode_step_at`] and sampling in place, run eagerly: the fixed-shape step a
    /// graph records, on any device (on the CPU it shows that the graph's step samples what
    /// the eager one does).
    Static,
    /// The fixed-shape step with its sampling run eagerly once, then recorded as a CUDA graph
    /// and replayed for every further token: one launch per token.
    CudaGraph,
}

impl Decoder {
    /// The decoder that runs on `device`: resolves [`Decoder::Auto`] and refuses a CUDA graph
    /// off CUDA.
    pub fn resolve(self, device: Device) -> Result<Decoder, ModelError> {
        match (self, device) {
            (Decoder::Auto, Device::Cuda(_)) => {
                if cuda_graph::turned_off() {
                    return Ok(Decoder::Eager);
                }
                Ok(match cuda_graph::available() {
                    Ok(()) => Decoder::CudaGraph,
                    Err(why) => {
                        tracing::warn!("sampling without CUDA graphs (eager decoding): {why}");
                        Decoder::Eager
                    }
                })
            }
            (Decoder::Auto, _) => Ok(Decoder::Eager),
            (Decoder::CudaGraph, Device::Cuda(_)) => {
                cuda_graph::available().map_err(ModelError::Cuda)?;
                Ok(Decoder::CudaGraph)
            }
            (Decoder::CudaGraph, other) => Err(ModelError::Input(format!(
                "CUDA graph decoding needs a CUDA device; the model is on {other:?}"
            ))),
            (chosen, _) => Ok(chosen),
        }
    }
}

/// Generates every image token for a batch of conditions, decoding as [`Decoder::Auto`]
/// chooses.
///
/// cond: [B] class ids or [B, T, caption_dim] caption features (T = cls_token_num);
/// prefix_mask: [B, T] bool, false at padded caption positions; seeds: one per sample.
/// Returns codes [B, block_size] (int64, on the model's device).
pub fn generate(
    gpt: &Gpt,
    cond: &Tensor,
    prefix_mask: Option<&Tensor>,
    sampling: &Sampling,
    seeds: &[u64],
) -> Result<Tensor, ModelError> {
    generate_with(gpt, cond, prefix_mask, sampling, seeds, Decoder::Auto)
}

/// [`generate`] with the decode loop chosen by `decoder`. Speculative Jacobi decoding
/// (`sampling.jacobi_window` > 0) runs its own loop, eagerly on every device: it takes
/// [`Decoder::Auto`] or [`Decoder::Eager`] and refuses the fixed-shape ones.
pub fn generate_with(
    gpt: &Gpt,
    cond: &Tensor,
    prefix_mask: Option<&Tensor>,
    sampling: &Sampling,
    seeds: &[u64],
    decoder: Decoder,
) -> Result<Tensor, ModelError> {
    let (codes, stats) = run(gpt, cond, prefix_mask, sampling, seeds, decoder)?;
    if let Some(stats) = stats {
        tracing::debug!(
            "speculative Jacobi decoding: {} passes for {} samples of {} tokens ({:.2}x fewer \
             than one token per pass)",
            stats.passes,
            seeds.len(),
            gpt.config.block_size,
            stats.step_compression(gpt.config.block_size)
        );
    }
    Ok(codes)
}

/// [`generate`] by speculative Jacobi decoding (`sampling.jacobi_window` must be positive),
/// with how many forward passes it took.
pub fn generate_speculative(
    gpt: &Gpt,
    cond: &Tensor,
    prefix_mask: Option<&Tensor>,
    sampling: &Sampling,
    seeds: &[u64],
) -> Result<(Tensor, JacobiStats), ModelError> {
    if sampling.jacobi_window < 1 {
        return Err(ModelError::Input(format!(
            "speculative decoding needs a Jacobi window of at least 1, got {}",
            sampling.jacobi_window
        )));
    }
    let (codes, stats) = run(gpt, cond, prefix_mask, sampling, seeds, Decoder::Eager)?;
    Ok((codes, stats.unwrap_or_default()))
}

/// The generation: codes [B, block_size], and the passes speculative decoding took.
fn run(
    gpt: &Gpt,
    cond: &Tensor,
    prefix_mask: Option<&Tensor>,
    sampling: &Sampling,
    seeds: &[u64],
    decoder: Decoder,
) -> Result<(Tensor, Option<JacobiStats>), ModelError> {
    sampling.validate()?;
    let speculative = sampling.jacobi_window > 0;
    if speculative && matches!(decoder, Decoder::Static | Decoder::CudaGraph) {
        return Err(ModelError::Input(format!(
            "speculative Jacobi decoding runs eagerly; {decoder:?} decoding cannot run it"
        )));
    }
    let batch = cond.size().first().copied().unwrap_or(0);
    if batch == 0 {
        return Err(ModelError::Input("empty condition batch".into()));
    }
    if seeds.len() as i64 != batch {
        return Err(ModelError::Input(format!(
            "{} seeds for a batch of {batch}",
            seeds.len()
        )));
    }
    let device = gpt.device();
    let requested = decoder;
    let decoder = decoder.resolve(device)?;
    let mut rng = Uniforms::new(seeds, device);
    let guided = sampling.guided();
    let (cond_all, mask_all) = if guided {
        let null = gpt.null_condition(batch).to_kind(cond.kind());
        let null = if cond.dim() == 3 {
            // The null caption has 120 rows; the prefix reads the first cls_token_num.
            null.narrow(1, 0, cond.size()[1])
        } else {
            null
        };
        (
            Tensor::cat(&[cond, &null], 0),
            prefix_mask.map(|m| Tensor::cat(&[m, m], 0)),
        )
    } else {
        (cond.shallow_clone(), prefix_mask.map(Tensor::shallow_clone))
    };
    tch::no_grad(|| {
        let mut cache = gpt.new_cache(cond_all.size()[0]);
        let logits = gpt.prefill(&cond_all, &mut cache, mask_all.as_ref())?;
        let first = sample(
            &mix(&logits.select(1, -1), guided, true, sampling),
            sampling,
            &mut rng,
        );
        if speculative {
            let (codes, stats) = jacobi::decode(gpt, sampling, &mut cache, &mut rng, &first)?;
            return Ok((codes, Some(stats)));
        }
        let keep_guiding = |i: i64| sampling.last_guided_step().is_none_or(|last| i <= last);
        let steps = gpt.config.block_size - 1;
        if decoder == Decoder::Eager {
            let mut token = first;
            let mut tokens = vec![token.shallow_clone()];
            for i in 0..steps {
                let logits = gpt.decode_sampled(&doubled(&token, guided), &mut cache)?;
                token = sample(
                    &mix(&logits.select(1, 0), guided, keep_guiding(i), sampling),
                    sampling,
                    &mut rng,
                );
                tokens.push(token.shallow_clone());
            }
            return Ok((Tensor::cat(&tokens, 1), None));
        }
        let mut fixed = FixedStepLoop::new(gpt, sampling, decoder, cache, rng, &first);
        fixed.may_fall_back = requested == Decoder::Auto;
        for i in 0..steps {
            fixed.step(keep_guiding(i))?;
        }
        Ok((fixed.tokens.shallow_clone(), None))
    })
}

/// The decode loop at fixed shapes and addresses: a step feeds the last sampled tokens, samples
/// the next ones and writes them into the output and into its own input, all on the device
/// and in place. Nothing in a step reads back to the host or allocates memory that outlives
/// it, so on CUDA the whole token (model, guidance, filtering and the draw) is recorded once as
/// a graph and then replayed, one launch per token.
struct FixedStepLoop<'a> {
    gpt: &'a Gpt,
    sampling: &'a Sampling,
    guided: bool,
    decoder: Decoder,
    cache: KvCache,
    rng: Uniforms,
    /// [B, 1], or [2B, 1] when guided (both halves the same): the tokens the next step feeds.
    input: Tensor,
    /// [1] int64: the cache position the next step writes.
    position: Tensor,
    /// [B, block_size] int64: the tokens sampled so far, the generation's result.
    tokens: Tensor,
    /// [1] int64: the column of `tokens` the next step writes.
    column: Tensor,
    /// The recorded step without and with guidance (the guidance interval switches from one
    /// to the other once).
    graphs: [Option<CudaGraph>; 2],
    /// Whether a step has run eagerly, setting up what a capture cannot record.
    warmed_up: bool,
    /// Whether a failed capture falls back to eager fixed-shape steps (the decoder was chosen
    /// by [`Decoder::Auto`]) rather than failing the generation.
    may_fall_back: bool,
}

impl<'a> FixedStepLoop<'a> {
    /// After the prefill: `cache` holds the prefix and `first` [B, 1] is the token sampled
    /// from its last position.
    fn new(
        gpt: &'a Gpt,
        sampling: &'a Sampling,
        decoder: Decoder,
        cache: KvCache,
        rng: Uniforms,
        first: &Tensor,
    ) -> Self {
        let guided = sampling.guided();
        let device = first.device();
        let tokens = Tensor::zeros(
            [first.size()[0], gpt.config.block_size],
            (Kind::Int64, device),
        );
        tokens.narrow(1, 0, 1).copy_(first);
        FixedStepLoop {
            gpt,
            sampling,
            guided,
            decoder,
            // Its own buffer: the steps overwrite it.
            input: doubled(first, guided).copy(),
            position: cache.next_position(),
            tokens,
            column: Tensor::from_slice(&[1i64]).to_device(device),
            cache,
            rng,
            graphs: [None, None],
            warmed_up: false,
            may_fall_back: false,
        }
    }

    fn step(&mut self, keep_guiding: bool) -> Result<(), ModelError> {
        // Libraries set themselves up on first use (cuBLAS handles, workspaces), which a
        // capture cannot record: the first step runs eagerly.
        if self.decoder != Decoder::CudaGraph || !self.warmed_up {
            self.warmed_up = true;
            return self.sample_next(keep_guiding);
        }
        let slot = usize::from(keep_guiding);
        let graph = match self.graphs[slot].take() {
            Some(graph) => graph,
            None => match self.record(keep_guiding) {
                Ok(graph) => graph,
                // A failed capture ran none of its kernels, so the step is still to take.
                Err(why) if self.may_fall_back => {
                    tracing::warn!(
                        "sampling without CUDA graphs (the fixed-shape step runs eagerly; \
                         LLAMAGEN_CUDA_GRAPHS=0 skips the attempt): {why}"
                    );
                    self.decoder = Decoder::Static;
                    return self.sample_next(keep_guiding);
                }
                Err(why) => return Err(why),
            },
        };
        let replayed = graph.replay();
        self.graphs[slot] = Some(graph);
        replayed
    }

    /// Records one step as a CUDA graph; recording runs nothing, the first replay takes the
    /// step.
    fn record(&mut self, keep_guiding: bool) -> Result<CudaGraph, ModelError> {
        let Device::Cuda(device) = self.gpt.device() else {
            return Err(ModelError::Input(format!(
                "CUDA graph decoding on {:?}",
                self.gpt.device()
            )));
        };
        let (graph, recorded) = CudaGraph::capture(device, || self.sample_next(keep_guiding))?;
        recorded.map(|()| graph)
    }

    /// One token for every sample: the fixed-shape decode step, guidance, filtering and the
    /// draw; then the position, the output column and the next input move on.
    fn sample_next(&mut self, keep_guiding: bool) -> Result<(), ModelError> {
        let logits = self
            .gpt
            .decode_step_at(&self.input, &self.position, &mut self.cache)?;
        let _ = self.position.g_add_scalar_(1);
        let mixed = mix(
            &logits.select(1, 0),
            self.guided,
            keep_guiding,
            self.sampling,
        );
        let token = sample(&mixed, self.sampling, &mut self.rng);
        let _ = self.tokens.index_copy_(1, &self.column, &token);
        let _ = self.column.g_add_scalar_(1);
        let batch = token.size()[0];
        self.input.narrow(0, 0, batch).copy_(&token);
        if self.guided {
            self.input.narrow(0, batch, batch).copy_(&token);
        }
        Ok(())
    }
}

/// The decoded token of every sequence of the batch, doubled when guided (both halves read
/// the same token): [B, 1] -> [2B, 1], else as it is.
fn doubled(token: &Tensor, guided: bool) -> Tensor {
    if guided {
        Tensor::cat(&[token, token], 0)
    } else {
        token.shallow_clone()
    }
}

/// logits: [2B, V] (conditional half first) when guided, else [B, V]. Returns [B, V].
fn mix(logits: &Tensor, guided: bool, keep_guiding: bool, sampling: &Sampling) -> Tensor {
    if !guided {
        return logits.shallow_clone();
    }
    if !keep_guiding {
        return logits.narrow(0, 0, logits.size()[0] / 2);
    }
    guide(logits, sampling.cfg_scale)
}

/// Classifier-free guidance on a doubled batch: logits [2B, V] with the conditional half
/// first; returns l_u + scale (l_c - l_u), [B, V].
pub fn guide(logits: &Tensor, scale: f64) -> Tensor {
    let half = logits.size()[0] / 2;
    let cond = logits.narrow(0, 0, half);
    let uncond = logits.narrow(0, half, half);
    &uncond + (&cond - &uncond) * scale
}

/// Filters `logits` [B, V] as LlamaGen does (temperature, then top-k, then top-p) and draws one
/// token per row with that row's uniform. Returns [B, 1] int64.
pub fn sample(logits: &Tensor, sampling: &Sampling, rng: &mut Uniforms) -> Tensor {
    let probs = filter_logits(logits, sampling).softmax(-1, Kind::Double);
    inverse_cdf(&probs, &rng.draw()).unsqueeze(1)
}

/// One token drawn from each distribution of `weights` [..., V] (f64, non-negative, not
/// necessarily normalized) with the uniform of `u` [...] in (0, 1]. Returns [...] int64.
pub(crate) fn inverse_cdf(weights: &Tensor, u: &Tensor) -> Tensor {
    let vocab = weights.size().last().copied().unwrap_or(1);
    let cdf = weights.cumsum(-1, Kind::Double);
    let total = cdf.narrow(-1, vocab - 1, 1);
    let u = u.to_device(cdf.device()).unsqueeze(-1) * total;
    // The token is the first whose cumulative weight reaches u; as u > 0, a token with zero
    // weight (filtered out) can never be it.
    cdf.lt_tensor(&u)
        .sum_dim_intlist(-1, false, Kind::Int64)
        .clamp_max(vocab - 1)
}

/// One splitmix64 stream per sample, yielding uniforms in (0, 1], computed where the samples
/// are (on the GPU, drawing reads nothing back to the host and sends nothing to the device).
///
/// The state lives in an int64 tensor: its additions and products wrap as u64 arithmetic
/// does, and the logical right shifts are arithmetic shifts with the sign bits masked off, so
/// the draws are bit for bit those of the scalar splitmix64.
pub struct Uniforms {
    /// [B] int64, each the u64 state of one stream.
    states: Tensor,
}

impl Uniforms {
    pub fn new(seeds: &[u64], device: Device) -> Self {
        let states: Vec<i64> = seeds.iter().map(|&s| s as i64).collect();
        Uniforms {
            states: Tensor::from_slice(&states).to_device(device),
        }
    }

    /// The next uniform of every stream, [B] f64 in (0, 1].
    pub fn draw(&mut self) -> Tensor {
        // In place: a recorded step reads and advances the state where it lives.
        let _ = self.states.g_add_scalar_(GOLDEN_GAMMA as i64);
        finalize(&self.states)
    }

    /// The next `count` uniforms of every stream, [B, count] f64: what `count` calls of
    /// [`Uniforms::draw`] return, side by side.
    pub fn draw_n(&mut self, count: i64) -> Tensor {
        let steps = Tensor::arange_start(1, count + 1, (Kind::Int64, self.states.device()))
            * GOLDEN_GAMMA as i64;
        let states = self.states.unsqueeze(1) + steps;
        let _ = self
            .states
            .g_add_scalar_(GOLDEN_GAMMA.wrapping_mul(count as u64) as i64);
        finalize(&states)
    }

    /// Where the streams are.
    pub fn device(&self) -> Device {
        self.states.device()
    }
}

/// splitmix64's increment.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output for states `z` (int64 holding u64 bits), as uniforms in (0, 1] f64.
fn finalize(z: &Tensor) -> Tensor {
    // u64 >> s of the state's bits.
    let shift = |z: &Tensor, s: i64| {
        z.bitwise_right_shift_tensor_scalar(s)
            .bitwise_and((1i64 << (64 - s)) - 1)
    };
    let z = (z.bitwise_xor_tensor(&shift(z, 30))) * 0xBF58_476D_1CE4_E5B9u64 as i64;
    let z = (z.bitwise_xor_tensor(&shift(&z, 27))) * 0x94D0_49BB_1331_11EBu64 as i64;
    let z = z.bitwise_xor_tensor(&shift(&z, 31));
    // The top 53 bits, plus one, over 2^53: exact in f64.
    (shift(&z, 11) + 1).to_kind(Kind::Double) / (1u64 << 53) as f64
}

/// Temperature, top-k and top-p filtering; removed entries become -inf. [B, V] -> [B, V].
pub fn filter_logits(logits: &Tensor, sampling: &Sampling) -> Tensor {
    let vocab = logits.size()[1];
    let mut logits = logits.to_kind(Kind::Float) / sampling.temperature.max(1e-5);
    if sampling.top_k > 0 {
        let k = sampling.top_k.clamp(1, vocab);
        let (top, _) = logits.topk(k, -1, true, true);
        let kth = top.narrow(-1, k - 1, 1);
        logits = logits.masked_fill(&logits.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if sampling.top_p < 1.0 {
        let (sorted, order) = logits.sort(-1, true);
        let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        let over = cumulative.gt(sampling.top_p);
        // Shift right so that the token that crosses the threshold is kept, and always the first.
        let remove = Tensor::cat(
            &[
                Tensor::zeros([over.size()[0], 1], (Kind::Bool, over.device())),
                over.narrow(-1, 0, vocab - 1),
            ],
            -1,
        );
        let remove = remove.scatter(1, &order, &remove);
        logits = logits.masked_fill(&remove, f64::NEG_INFINITY);
    }
    logits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Tensor {
        Tensor::from_slice(&[0.0f32, 3.0, 1.0, 2.0, -1.0, 2.5]).view([1, 6])
    }

    fn kept(l: &Tensor) -> Vec<bool> {
        let finite = l.isfinite().view([-1]);
        Vec::<bool>::try_from(&finite).unwrap()
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let s = Sampling {
            top_k: 3,
            ..Sampling::default()
        };
        assert_eq!(
            kept(&filter_logits(&logits(), &s)),
            [false, true, false, true, false, true]
        );
    }

    #[test]
    fn top_p_keeps_the_token_that_crosses_the_threshold() {
        // softmax of the sorted logits [3, 2.5, 2, 1, 0, -1]: 0.46, 0.28, 0.17, ...
        let s = Sampling {
            top_p: 0.5,
            ..Sampling::default()
        };
        assert_eq!(
            kept(&filter_logits(&logits(), &s)),
            [false, true, false, false, false, true]
        );
        let s = Sampling {
            top_p: 0.3,
            ..Sampling::default()
        };
        assert_eq!(
            kept(&filter_logits(&logits(), &s)),
            [false, true, false, false, false, false]
        );
    }

    #[test]
    fn temperature_divides_and_is_floored() {
        let s = Sampling {
            temperature: 0.5,
            ..Sampling::default()
        };
        let l = filter_logits(&logits(), &s);
        assert_eq!(l.double_value(&[0, 1]), 6.0);
        let s = Sampling {
            temperature: 0.0,
            ..Sampling::default()
        };
        let floored = filter_logits(&logits(), &s).double_value(&[0, 1]);
        assert!((floored - 3.0e5).abs() < 1e-3 * 3.0e5, "{floored}");
    }

    #[test]
    fn sampling_follows_the_distribution_and_skips_filtered_tokens() {
        // probabilities (after top-k 2 of [ln 1, ln 3, ln 0.5]) are 1/4 and 3/4.
        let logits = Tensor::from_slice(&[0.0f32, 3f32.ln(), 0.5f32.ln()]).view([1, 3]);
        let s = Sampling {
            top_k: 2,
            ..Sampling::default()
        };
        let mut rng = Uniforms::new(&[7], Device::Cpu);
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            counts[sample(&logits, &s, &mut rng).int64_value(&[0, 0]) as usize] += 1;
        }
        assert_eq!(counts[2], 0, "a filtered token was drawn");
        let share = counts[1] as f64 / 4000.0;
        assert!(
            (share - 0.75).abs() < 0.03,
            "token 1 drawn {share} of the time, expected 0.75"
        );
    }

    /// The scalar splitmix64 the tensor streams must reproduce.
    fn splitmix64(state: &mut u64) -> f64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn tensor_uniforms_are_the_scalar_splitmix64_bit_for_bit() {
        // Seeds that exercise the sign bit and the wrap-around of the u64 arithmetic.
        let seeds = [
            0u64,
            1,
            42,
            u64::MAX,
            1 << 63,
            0x9E37_79B9_7F4A_7C15,
            123_456_789,
        ];
        let mut rng = Uniforms::new(&seeds, Device::Cpu);
        let mut states = seeds;
        for _ in 0..1000 {
            let drawn = Vec::<f64>::try_from(&rng.draw()).unwrap();
            for (state, u) in states.iter_mut().zip(drawn) {
                let expected = splitmix64(state);
                assert_eq!(u.to_bits(), expected.to_bits());
                assert!(u > 0.0 && u <= 1.0);
            }
        }
    }

    #[test]
    fn a_block_of_uniforms_is_the_draws_one_by_one() {
        let seeds = [7u64, u64::MAX, 1 << 63];
        let (mut block, mut single) = (
            Uniforms::new(&seeds, Device::Cpu),
            Uniforms::new(&seeds, Device::Cpu),
        );
        for count in [1, 5, 2] {
            let drawn = block.draw_n(count);
            assert_eq!(drawn.size(), [3, count]);
            let one_by_one =
                Tensor::stack(&(0..count).map(|_| single.draw()).collect::<Vec<_>>(), 1);
            assert!(drawn.equal(&one_by_one), "block of {count} differs");
        }
        // Both streams stand at the same state afterwards.
        assert!(block.draw().equal(&single.draw()));
    }

    #[test]
    fn a_cuda_graph_off_cuda_is_refused() {
        let err = Decoder::CudaGraph.resolve(Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("needs a CUDA device"), "{err}");
        assert_eq!(Decoder::Auto.resolve(Device::Cpu).unwrap(), Decoder::Eager);
        assert_eq!(
            Decoder::Static.resolve(Device::Cpu).unwrap(),
            Decoder::Static
        );
    }

    #[test]
    fn a_fixed_step_leaves_every_buffer_where_it_was() {
        // A CUDA graph's replay reads and writes the addresses its capture saw, so the loop
        // must update its buffers in place, never replace them.
        let (config, _) = crate::tiny::configs();
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let gpt = Gpt::new(&vs.root(), config).unwrap();
        let sampling = Sampling {
            cfg_scale: 2.0,
            cfg_interval: 1,
            ..Sampling::default()
        };
        tch::no_grad(|| {
            let mut cache = gpt.new_cache(4);
            let prefix = Tensor::from_slice(&[1i64, 2, 3, 4]);
            let _ = gpt.prefill(&prefix, &mut cache, None).unwrap();
            let start = cache.len();
            let first = Tensor::from_slice(&[5i64, 6]).view([2, 1]);
            let rng = Uniforms::new(&[1, 2], Device::Cpu);
            let states = rng.states.copy();
            let mut fixed =
                FixedStepLoop::new(&gpt, &sampling, Decoder::Static, cache, rng, &first);
            let addresses = |f: &FixedStepLoop| -> Vec<usize> {
                [&f.input, &f.position, &f.tokens, &f.column, &f.rng.states]
                    .into_iter()
                    .chain(f.cache.buffers())
                    .map(|t| t.data_ptr() as usize)
                    .collect()
            };
            let before = addresses(&fixed);
            // Guided, then past the guidance interval.
            for keep_guiding in [true, true, false] {
                fixed.step(keep_guiding).unwrap();
            }
            assert_eq!(addresses(&fixed), before, "a buffer moved");
            assert_eq!(fixed.position.int64_value(&[0]), start + 3);
            assert_eq!(fixed.column.int64_value(&[0]), 4);
            assert_eq!(fixed.tokens.narrow(1, 0, 1), first);
            // Both halves of the guided batch feed the last sampled token.
            let last = fixed.tokens.narrow(1, 3, 1);
            assert_eq!(fixed.input, Tensor::cat(&[&last, &last], 0));
            assert_ne!(fixed.rng.states, states, "the streams did not advance");
        });
    }

    #[test]
    fn bad_settings_are_refused() {
        for s in [
            Sampling {
                top_p: 0.0,
                ..Sampling::default()
            },
            Sampling {
                top_k: -1,
                ..Sampling::default()
            },
            Sampling {
                temperature: f64::NAN,
                ..Sampling::default()
            },
            Sampling {
                cfg_interval: -2,
                ..Sampling::default()
            },
        ] {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }
}
