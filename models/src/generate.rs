//! Autoregressive sampling as LlamaGen's `generate`: prefill the condition prefix, then decode
//! one token at a time from the KV cache, with classifier-free guidance and top-k / top-p /
//! temperature filtering.
//!
//! Randomness is per sample: each row of the batch draws its tokens from its own seeded stream
//! (inverse-CDF sampling with splitmix64 uniforms), so a sample depends only on its seed and
//! condition, not on the batch it ran in, the device, other threads using libtorch's global
//! generator, or a resumed run. LlamaGen draws with `torch.multinomial` from the global
//! generator instead; the distribution sampled is the same, the particular draws are not.

use tch::{Kind, Tensor};

use crate::ModelError;
use crate::gpt::Gpt;

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
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            cfg_scale: 1.5,
            cfg_interval: -1,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
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
        if self.cfg_interval < -1 {
            return bad(format!(
                "cfg interval must be >= -1, got {}",
                self.cfg_interval
            ));
        }
        Ok(())
    }

    fn guided(&self) -> bool {
        self.cfg_scale > 1.0
    }
}

/// Generates every image token for a batch of conditions.
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
    sampling.validate()?;
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
    let mut rng = Uniforms::new(seeds);
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
        let mut token = sample(
            &mix(&logits.select(1, -1), guided, true, sampling),
            sampling,
            &mut rng,
        );
        let mut tokens = vec![token.shallow_clone()];
        for i in 0..gpt.config.block_size - 1 {
            let keep_guiding = !(sampling.cfg_interval > -1 && i > sampling.cfg_interval);
            let input = if guided {
                Tensor::cat(&[&token, &token], 0)
            } else {
                token.shallow_clone()
            };
            let logits = gpt.decode_step(&input, &mut cache)?;
            token = sample(
                &mix(&logits.select(1, 0), guided, keep_guiding, sampling),
                sampling,
                &mut rng,
            );
            tokens.push(token.shallow_clone());
        }
        Ok(Tensor::cat(&tokens, 1))
    })
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
    let cdf = probs.cumsum(-1, Kind::Double);
    let total = cdf.narrow(-1, cdf.size()[1] - 1, 1);
    let u = Tensor::from_slice(&rng.draw())
        .to_device(cdf.device())
        .unsqueeze(1)
        * total;
    // The token is the first whose cumulative probability reaches u; as u > 0, a token with
    // zero probability (filtered out) can never be it.
    cdf.lt_tensor(&u)
        .sum_dim_intlist(-1, true, Kind::Int64)
        .clamp_max(cdf.size()[1] - 1)
}

/// One splitmix64 stream per sample, yielding uniforms in (0, 1].
pub struct Uniforms {
    states: Vec<u64>,
}

impl Uniforms {
    pub fn new(seeds: &[u64]) -> Self {
        Uniforms {
            states: seeds.to_vec(),
        }
    }

    /// The next uniform of every stream, in (0, 1].
    pub fn draw(&mut self) -> Vec<f64> {
        self.states
            .iter_mut()
            .map(|state| {
                *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }
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
        let mut rng = Uniforms::new(&[7]);
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
