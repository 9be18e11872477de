//! The LlamaGen generator: a Llama decoder over VQ image tokens behind a condition prefix.
//!
//! Layout and names follow `autoregressive/models/gpt.py` of FoundationVision/LlamaGen, so a
//! converted state dict loads without renaming:
//!
//! ```text
//! cls_embedding.embedding_table.weight        [num_classes + 1, D]   (class-conditional)
//! cls_embedding.cap_proj.fc1.weight           [D, caption_dim]       (text-conditional)
//! cls_embedding.cap_proj.fc2.weight           [D, D]
//! cls_embedding.uncond_embedding              [120, caption_dim]     (a buffer, not trained)
//! tok_embeddings.weight                       [V, D]
//! layers.{i}.attention.wqkv.weight            [(H + 2 Hkv) * Dh, D]
//! layers.{i}.attention.wo.weight              [D, D]
//! layers.{i}.feed_forward.w1|w3.weight        [F, D]
//! layers.{i}.feed_forward.w2.weight           [D, F]
//! layers.{i}.attention_norm|ffn_norm.weight   [D]
//! norm.weight                                 [D]
//! output.weight                               [V, D]
//! ```
//!
//! One quirk is reproduced on purpose: the 2D RoPE table holds zeros (cosine *and* sine) at
//! the condition prefix positions, so the queries and keys of the prefix are multiplied to zero
//! rather than left unrotated. Released checkpoints were trained that way; "fixing" it would
//! change every logit.

use tch::{Kind, Tensor, nn};

use crate::ModelError;

/// What the prefix in front of the image tokens is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Conditioning {
    /// One class label per image (`c2i`): a single prefix token.
    #[serde(rename = "c2i")]
    Class,
    /// FLAN-T5 caption features (`t2i`): `cls_token_num` prefix tokens.
    #[serde(rename = "t2i")]
    Text,
}

/// Hyper-parameters of a GPT; field names and defaults are those of LlamaGen's `ModelArgs`
/// (as JSON, every field is required: `llamagen sample --gpt-config`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    pub dim: i64,
    pub n_layer: i64,
    pub n_head: i64,
    /// Key/value heads for grouped-query attention; `None` means `n_head`.
    pub n_kv_head: Option<i64>,
    pub multiple_of: i64,
    pub ffn_dim_multiplier: Option<f64>,
    pub rope_base: f64,
    pub norm_eps: f64,
    pub initializer_range: f64,
    pub token_dropout_p: f64,
    pub attn_dropout_p: f64,
    pub resid_dropout_p: f64,
    pub ffn_dropout_p: f64,
    pub drop_path_rate: f64,
    pub num_classes: i64,
    pub caption_dim: i64,
    /// Rows of the learned-at-init null caption; LlamaGen fixes it at 120 whatever the prefix.
    pub caption_token_num: i64,
    pub class_dropout_prob: f64,
    pub conditioning: Conditioning,
    pub vocab_size: i64,
    pub cls_token_num: i64,
    /// Image tokens per sample; a square number (256 for 256 px at downsample 16).
    pub block_size: i64,
}

/// The sizes of LlamaGen's `GPT_models` (layers, heads, width).
pub const SIZES: [(&str, i64, i64, i64); 8] = [
    ("GPT-B", 12, 12, 768),
    ("GPT-L", 24, 16, 1024),
    ("GPT-XL", 36, 20, 1280),
    ("GPT-XXL", 48, 24, 1536),
    ("GPT-XXXL", 48, 40, 2560),
    ("GPT-1B", 22, 32, 2048),
    ("GPT-3B", 24, 32, 3200),
    ("GPT-7B", 32, 32, 4096),
];

impl GptConfig {
    /// LlamaGen's defaults with the given shape; every dropout as in the paper's training.
    pub fn new(n_layer: i64, n_head: i64, dim: i64, conditioning: Conditioning) -> Self {
        GptConfig {
            dim,
            n_layer,
            n_head,
            n_kv_head: None,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            rope_base: 10000.0,
            norm_eps: 1e-5,
            initializer_range: 0.02,
            token_dropout_p: 0.1,
            attn_dropout_p: 0.0,
            resid_dropout_p: 0.1,
            ffn_dropout_p: 0.1,
            drop_path_rate: 0.0,
            num_classes: 1000,
            caption_dim: 2048,
            caption_token_num: 120,
            class_dropout_prob: 0.1,
            conditioning,
            vocab_size: 16384,
            cls_token_num: match conditioning {
                Conditioning::Class => 1,
                Conditioning::Text => 120,
            },
            block_size: 256,
        }
    }

    /// A named size (`GPT-B` ... `GPT-7B`) for images of `grid x grid` tokens.
    pub fn named(name: &str, conditioning: Conditioning, grid: i64) -> Result<Self, ModelError> {
        // `GPT-B` as LlamaGen's scripts spell it, or `B` as the pipeline config's model.size.
        let (_, layers, heads, dim) = SIZES
            .iter()
            .find(|(n, ..)| {
                n.eq_ignore_ascii_case(name)
                    || n.strip_prefix("GPT-")
                        .is_some_and(|short| short.eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| {
                let known: Vec<&str> = SIZES.iter().map(|s| s.0).collect();
                ModelError::Config(format!(
                    "unknown GPT size {name:?}; known: {}",
                    known.join(", ")
                ))
            })?;
        let mut config = GptConfig::new(*layers, *heads, *dim, conditioning);
        config.block_size = grid * grid;
        Ok(config)
    }

    pub fn head_dim(&self) -> i64 {
        self.dim / self.n_head
    }

    pub fn kv_heads(&self) -> i64 {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// SwiGLU width: two thirds of 4 D, times the optional multiplier, rounded up to
    /// `multiple_of` (Python's `int()` truncation included).
    pub fn ffn_hidden(&self) -> i64 {
        let mut hidden = (2 * 4 * self.dim) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            hidden = (m * hidden as f64) as i64;
        }
        find_multiple(hidden, self.multiple_of)
    }

    pub fn grid_size(&self) -> i64 {
        (self.block_size as f64).sqrt().round() as i64
    }

    /// Sequence length the model sees: the condition prefix plus every image token.
    pub fn max_len(&self) -> i64 {
        self.cls_token_num + self.block_size
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.dim <= 0 || self.n_head <= 0 || self.n_layer <= 0 || self.vocab_size <= 0 {
            return bad("dim, n_head, n_layer and vocab_size must be positive".into());
        }
        if self.dim % self.n_head != 0 {
            return bad(format!(
                "dim {} is not a multiple of n_head {}",
                self.dim, self.n_head
            ));
        }
        if self.head_dim() % 4 != 0 {
            return bad(format!(
                "head dim {} must be a multiple of 4 for 2D RoPE",
                self.head_dim()
            ));
        }
        if self.n_head % self.kv_heads() != 0 {
            return bad(format!(
                "n_head {} is not a multiple of n_kv_head {}",
                self.n_head,
                self.kv_heads()
            ));
        }
        let grid = self.grid_size();
        if grid * grid != self.block_size {
            return bad(format!("block_size {} is not a square", self.block_size));
        }
        match self.conditioning {
            Conditioning::Class if self.cls_token_num != 1 => {
                bad("class conditioning uses exactly one prefix token".into())
            }
            Conditioning::Text
                if self.cls_token_num < 1 || self.cls_token_num > self.caption_token_num =>
            {
                bad(format!(
                    "cls_token_num {} must lie in 1..={}",
                    self.cls_token_num, self.caption_token_num
                ))
            }
            _ => Ok(()),
        }
    }
}

fn find_multiple(n: i64, k: i64) -> i64 {
    if n % k == 0 { n } else { n + k - n % k }
}

/// Bias-free linear layer weight `[out, in]`, initialised as LlamaGen does (normal, std 0.02).
fn linear(p: nn::Path, out_dim: i64, in_dim: i64, std: f64) -> Tensor {
    p.var(
        "weight",
        &[out_dim, in_dim],
        nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            eps,
        }
    }

    /// Normalises in f32 (f64 for f64 activations) whatever the activation dtype, then scales
    /// in the activation dtype.
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = upcast(x.kind());
        let xf = x.to_kind(kind);
        let norm = &xf * (xf.square().mean_dim(-1, true, kind) + self.eps).rsqrt();
        norm.to_kind(x.kind()) * &self.weight
    }
}

struct Attention {
    wqkv: Tensor,
    wo: Tensor,
    n_head: i64,
    n_kv_head: i64,
    head_dim: i64,
    attn_dropout_p: f64,
    resid_dropout_p: f64,
}

impl Attention {
    /// x: [B, L, D]; rope: [L, Dh/2, 2], or [B, L, Dh/2, 2] per sequence; `cache` receives
    /// this call's keys and values (see [`CacheWrite`]); mask: [B, 1, L, keys] (true =
    /// attend), where keys is start + L for a write from `start` and the cache's capacity for
    /// a write at device positions (which needs the mask). Returns [B, L, D].
    fn forward(
        &self,
        x: &Tensor,
        rope: &Tensor,
        cache: Option<CacheWrite<'_>>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (b, l, dim) = x.size3().expect("attention input is [B, L, D]");
        let kv_dim = self.n_kv_head * self.head_dim;
        let qkv = x.linear::<Tensor>(&self.wqkv, None);
        let q = qkv
            .narrow(-1, 0, dim)
            .view([b, l, self.n_head, self.head_dim]);
        let k = qkv
            .narrow(-1, dim, kv_dim)
            .view([b, l, self.n_kv_head, self.head_dim]);
        let v = qkv
            .narrow(-1, dim + kv_dim, kv_dim)
            .view([b, l, self.n_kv_head, self.head_dim]);
        let q = apply_rope(&q, rope).transpose(1, 2);
        let k = apply_rope(&k, rope).transpose(1, 2);
        let v = v.transpose(1, 2);

        let (keys, values, start) = match cache {
            Some(CacheWrite {
                keys,
                values,
                at: Position::From(start),
            }) => {
                keys.narrow(2, start, l).copy_(&k);
                values.narrow(2, start, l).copy_(&v);
                (
                    keys.narrow(2, 0, start + l),
                    values.narrow(2, 0, start + l),
                    start,
                )
            }
            Some(CacheWrite {
                keys,
                values,
                at: Position::At(position),
            }) => {
                let _ = keys.index_copy_(2, position, &k);
                let _ = values.index_copy_(2, position, &v);
                // Every position up to the capacity, unwritten ones masked out by the caller:
                // the shapes stay the same from step to step.
                (keys.shallow_clone(), values.shallow_clone(), 0)
            }
            Some(CacheWrite {
                keys,
                values,
                at: Position::Rows(positions),
            }) => {
                let index = positions
                    .view([b, 1, l, 1])
                    .expand([b, self.n_kv_head, l, self.head_dim], false);
                let _ = keys.scatter_(2, &index, &k);
                let _ = values.scatter_(2, &index, &v);
                (keys.shallow_clone(), values.shallow_clone(), 0)
            }
            None => (k, v, 0),
        };
        debug_assert!(
            mask.is_some() || keys.size()[2] == start + l,
            "a write at a device position attends over the whole capacity and needs a mask"
        );
        let groups = self.n_head / self.n_kv_head;
        let (keys, values) = if groups > 1 {
            (
                keys.repeat_interleave_self_int(groups, 1, None),
                values.repeat_interleave_self_int(groups, 1, None),
            )
        } else {
            (keys, values)
        };

        // A single query at the end of the sequence may see every cached key; a block of
        // queries starting at 0 is plainly causal; anything else needs an explicit mask.
        let explicit;
        let (mask, causal) = match mask {
            Some(m) => (Some(m), false),
            None if l == 1 => (None, false),
            None if start == 0 => (None, true),
            None => {
                let rows = Tensor::arange(l, (Kind::Int64, x.device())).unsqueeze(1) + start;
                let cols = Tensor::arange(start + l, (Kind::Int64, x.device())).unsqueeze(0);
                explicit = cols.le_tensor(&rows);
                (Some(&explicit), false)
            }
        };
        let dropout = if train { self.attn_dropout_p } else { 0.0 };
        let out = Tensor::scaled_dot_product_attention(
            &q, &keys, &values, mask, dropout, causal, None, false,
        );
        let out = out.transpose(1, 2).contiguous().view([b, l, dim]);
        out.linear::<Tensor>(&self.wo, None)
            .dropout(self.resid_dropout_p, train)
    }
}

/// Where an attention call writes its keys and values: the layer's cache tensors
/// [B, Hkv, capacity, Dh] and the position of the call's first row.
struct CacheWrite<'a> {
    keys: &'a mut Tensor,
    values: &'a mut Tensor,
    at: Position<'a>,
}

#[derive(Clone, Copy)]
enum Position<'a> {
    /// Rows go to `start..start + L`, a position known on the host.
    From(i64),
    /// One row goes to the position held in a [1] int64 tensor on the cache's device: nothing
    /// is read back to the host and every shape is fixed, as a CUDA graph needs.
    At(&'a Tensor),
    /// Each sequence's rows go to its own positions, a [B, L] int64 tensor on the cache's
    /// device: sequences that have advanced by different amounts decode in one call.
    Rows(&'a Tensor),
}

struct FeedForward {
    w1: Tensor,
    w2: Tensor,
    w3: Tensor,
    dropout_p: f64,
}

impl FeedForward {
    /// SwiGLU: w2(silu(w1 x) * w3 x). [B, L, D] -> [B, L, D].
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let gate = x.linear::<Tensor>(&self.w1, None).silu();
        (gate * x.linear::<Tensor>(&self.w3, None))
            .linear::<Tensor>(&self.w2, None)
            .dropout(self.dropout_p, train)
    }
}

struct Block {
    attention: Attention,
    feed_forward: FeedForward,
    attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
    drop_path: f64,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        rope: &Tensor,
        cache: Option<CacheWrite<'_>>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let attn =
            self.attention
                .forward(&self.attention_norm.forward(x), rope, cache, mask, train);
        let h = x + drop_path(&attn, self.drop_path, train);
        let ffn = self.feed_forward.forward(&self.ffn_norm.forward(&h), train);
        &h + drop_path(&ffn, self.drop_path, train)
    }
}

/// Stochastic depth: drops the whole residual branch of a sample, scaling survivors by 1/keep.
fn drop_path(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return x.shallow_clone();
    }
    let keep = 1.0 - p;
    let mut shape = vec![x.size()[0]];
    shape.resize(x.dim(), 1);
    let mask = Tensor::empty(&shape, (x.kind(), x.device())).bernoulli_float_(keep);
    x * (mask / keep)
}

enum ConditionEmbedder {
    Class {
        table: Tensor,
        num_classes: i64,
    },
    Caption {
        fc1: Tensor,
        fc2: Tensor,
        /// [caption_token_num, caption_dim]
        uncond: Tensor,
    },
}

/// Keys and values of every layer for one generation batch.
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
    /// [B, 1, capacity, capacity] (true = attend), only when the prefix has padding.
    mask: Option<Tensor>,
}

impl KvCache {
    /// Every layer's key and value tensors.
    #[cfg(test)]
    pub(crate) fn buffers(&self) -> impl Iterator<Item = &Tensor> {
        self.keys.iter().chain(&self.values)
    }

    /// Positions filled so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next position to fill as a [1] int64 tensor on the cache's device: where
    /// [`Gpt::decode_step_at`] starts after the prefill.
    pub fn next_position(&self) -> Tensor {
        let device = self.keys.first().map_or(tch::Device::Cpu, Tensor::device);
        Tensor::from_slice(&[self.len]).to_device(device)
    }

    fn mask_rows(&self, start: i64, rows: i64) -> Option<Tensor> {
        self.mask
            .as_ref()
            .map(|m| m.narrow(2, start, rows).narrow(3, 0, start + rows))
    }
}

/// A LlamaGen GPT whose weights live in the `nn::Path` it was built on.
pub struct Gpt {
    pub config: GptConfig,
    condition: ConditionEmbedder,
    tok_embeddings: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    output: Tensor,
    /// [cls_token_num + block_size, Dh/2, 2] cosines and sines (f32), zeros on the prefix.
    rope: Tensor,
}

impl Gpt {
    /// Creates the variables under `p` with LlamaGen's initialisation (normal 0.02, output
    /// layer zero).
    pub fn new(p: &nn::Path, config: GptConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let std = config.initializer_range;
        let condition = match config.conditioning {
            Conditioning::Class => {
                let rows = config.num_classes + i64::from(config.class_dropout_prob > 0.0);
                let table = p / "cls_embedding" / "embedding_table";
                ConditionEmbedder::Class {
                    table: table.var(
                        "weight",
                        &[rows, config.dim],
                        nn::Init::Randn {
                            mean: 0.0,
                            stdev: std,
                        },
                    ),
                    num_classes: config.num_classes,
                }
            }
            Conditioning::Text => {
                let emb = p / "cls_embedding";
                let proj = &emb / "cap_proj";
                let mut uncond = emb.zeros_no_train(
                    "uncond_embedding",
                    &[config.caption_token_num, config.caption_dim],
                );
                tch::no_grad(|| {
                    let init = Tensor::randn(
                        [config.caption_token_num, config.caption_dim],
                        (Kind::Float, p.device()),
                    ) / (config.caption_dim as f64).sqrt();
                    uncond.copy_(&init);
                });
                ConditionEmbedder::Caption {
                    fc1: linear(&proj / "fc1", config.dim, config.caption_dim, std),
                    fc2: linear(&proj / "fc2", config.dim, config.dim, std),
                    uncond,
                }
            }
        };
        let tok_embeddings = (p / "tok_embeddings").var(
            "weight",
            &[config.vocab_size, config.dim],
            nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let hidden = config.ffn_hidden();
        let kv_dim = config.kv_heads() * config.head_dim();
        let layers = (0..config.n_layer)
            .map(|i| {
                let lp = p / "layers" / i;
                let ap = &lp / "attention";
                let fp = &lp / "feed_forward";
                let drop_path = if config.n_layer > 1 {
                    config.drop_path_rate * i as f64 / (config.n_layer - 1) as f64
                } else {
                    0.0
                };
                Block {
                    attention: Attention {
                        wqkv: linear(&ap / "wqkv", config.dim + 2 * kv_dim, config.dim, std),
                        wo: linear(&ap / "wo", config.dim, config.dim, std),
                        n_head: config.n_head,
                        n_kv_head: config.kv_heads(),
                        head_dim: config.head_dim(),
                        attn_dropout_p: config.attn_dropout_p,
                        resid_dropout_p: config.resid_dropout_p,
                    },
                    feed_forward: FeedForward {
                        w1: linear(&fp / "w1", hidden, config.dim, std),
                        w2: linear(&fp / "w2", config.dim, hidden, std),
                        w3: linear(&fp / "w3", hidden, config.dim, std),
                        dropout_p: config.ffn_dropout_p,
                    },
                    attention_norm: RmsNorm::new(
                        &lp / "attention_norm",
                        config.dim,
                        config.norm_eps,
                    ),
                    ffn_norm: RmsNorm::new(&lp / "ffn_norm", config.dim, config.norm_eps),
                    drop_path,
                }
            })
            .collect();
        let norm = RmsNorm::new(p / "norm", config.dim, config.norm_eps);
        let output = (p / "output").var(
            "weight",
            &[config.vocab_size, config.dim],
            nn::Init::Const(0.0),
        );
        let rope = rope_2d(
            config.grid_size(),
            config.head_dim(),
            config.rope_base,
            config.cls_token_num,
        )
        .to_device(p.device());
        Ok(Gpt {
            config,
            condition,
            tok_embeddings,
            layers,
            norm,
            output,
            rope,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.tok_embeddings.device()
    }

    /// The null condition used for guidance and condition dropout: the extra class row, or the
    /// null caption. Returns [B] class ids or [B, caption_token_num, caption_dim] features.
    pub fn null_condition(&self, batch: i64) -> Tensor {
        match &self.condition {
            ConditionEmbedder::Class { num_classes, .. } => {
                Tensor::full([batch], *num_classes, (Kind::Int64, self.rope.device()))
            }
            ConditionEmbedder::Caption { uncond, .. } => uncond.unsqueeze(0).expand(
                [
                    batch,
                    self.config.caption_token_num,
                    self.config.caption_dim,
                ],
                false,
            ),
        }
    }

    /// Replaces the condition of the samples where `drop` ([B] bool) is set by the null one;
    /// the trainer's condition dropout for classifier-free guidance.
    pub fn drop_condition(&self, cond: &Tensor, drop: &Tensor) -> Tensor {
        let null = self.null_condition(cond.size()[0]);
        match self.config.conditioning {
            Conditioning::Class => null.where_self(drop, cond),
            Conditioning::Text => null
                .to_kind(cond.kind())
                .where_self(&drop.view([-1, 1, 1]), cond),
        }
    }

    /// cond: [B] class ids (i64) or [B, T >= cls_token_num, caption_dim] features.
    /// Returns the prefix embeddings [B, cls_token_num, D].
    pub fn embed_condition(&self, cond: &Tensor) -> Result<Tensor, ModelError> {
        let kind = self.tok_embeddings.kind();
        match &self.condition {
            ConditionEmbedder::Class { table, .. } => {
                if cond.dim() != 1 || cond.kind() != Kind::Int64 {
                    return Err(ModelError::Input(format!(
                        "class condition must be [B] int64, got {:?} {:?}",
                        cond.size(),
                        cond.kind()
                    )));
                }
                let rows = table.size()[0];
                if cond.numel() > 0 {
                    let (lo, hi) = (cond.min().int64_value(&[]), cond.max().int64_value(&[]));
                    if lo < 0 || hi >= rows {
                        return Err(ModelError::Input(format!(
                            "class ids must lie in 0..{rows}, got {lo}..={hi}"
                        )));
                    }
                }
                Ok(Tensor::embedding(table, cond, -1, false, false).unsqueeze(1))
            }
            ConditionEmbedder::Caption { fc1, fc2, .. } => {
                let size = cond.size();
                if size.len() != 3
                    || size[1] < self.config.cls_token_num
                    || size[2] != self.config.caption_dim
                {
                    return Err(ModelError::Input(format!(
                        "caption condition must be [B, >= {}, {}], got {size:?}",
                        self.config.cls_token_num, self.config.caption_dim
                    )));
                }
                let x = cond.narrow(1, 0, self.config.cls_token_num).to_kind(kind);
                Ok(x.linear::<Tensor>(fc1, None)
                    .gelu("tanh")
                    .linear::<Tensor>(fc2, None))
            }
        }
    }

    fn embed_tokens(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        if tokens.dim() != 2 || tokens.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!(
                "image tokens must be [B, N] int64, got {:?} {:?}",
                tokens.size(),
                tokens.kind()
            )));
        }
        if tokens.numel() > 0 {
            let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
            if lo < 0 || hi >= self.config.vocab_size {
                return Err(ModelError::Input(format!(
                    "image tokens must lie in 0..{}, got {lo}..={hi}",
                    self.config.vocab_size
                )));
            }
        }
        Ok(self.embed_sampled(tokens))
    }

    /// The embeddings of tokens known to be in range (sampled from this model's logits), without
    /// the check that reads them back to the host. tokens: [B, N] -> [B, N, D].
    fn embed_sampled(&self, tokens: &Tensor) -> Tensor {
        Tensor::embedding(&self.tok_embeddings, tokens, -1, false, false)
    }

    fn head(&self, h: &Tensor) -> Tensor {
        self.norm
            .forward(h)
            .linear::<Tensor>(&self.output, None)
            .to_kind(upcast(h.kind()))
    }

    /// Teacher-forced pass over the prefix followed by `tokens`.
    ///
    /// cond: see [`Gpt::embed_condition`]; tokens: [B, N] with cls_token_num + N <= max_len;
    /// mask: [B, 1, L, L] bool (true = attend) for padded captions, else causal.
    /// Returns logits [B, L, V] (f32) for every position, L = cls_token_num + N.
    pub fn forward(
        &self,
        cond: &Tensor,
        tokens: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let mut h = self.embed(cond, tokens, mask, train)?;
        let rope = self.rope.narrow(0, 0, h.size()[1]);
        for layer in &self.layers {
            h = layer.forward(&h, &rope, None, mask, train);
        }
        Ok(self.head(&h))
    }

    /// The blocks' input: the prefix and the tokens embedded, [B, L, D], after token dropout;
    /// checks the length and the mask's shape.
    fn embed(
        &self,
        cond: &Tensor,
        tokens: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let prefix = self.embed_condition(cond)?;
        let h = Tensor::cat(&[prefix, self.embed_tokens(tokens)?], 1);
        let len = h.size()[1];
        if len > self.config.max_len() {
            return Err(ModelError::Input(format!(
                "sequence of {len} exceeds the model's {}",
                self.config.max_len()
            )));
        }
        if let Some(m) = mask {
            let b = h.size()[0];
            if m.size() != [b, 1, len, len] {
                return Err(ModelError::Input(format!(
                    "mask must be [{b}, 1, {len}, {len}], got {:?}",
                    m.size()
                )));
            }
        }
        Ok(h.dropout(self.config.token_dropout_p, train))
    }

    /// The training objective: `codes` [B, N] are the image's tokens; the model reads the
    /// prefix and codes[:, :N-1] and predicts all N. mask: [B, 1, L, L] with
    /// L = cls_token_num + N - 1; valid: [B] weights (LlamaGen's t2i `valid` flags), else a
    /// plain mean. Returns (logits [B, N, V], mean cross-entropy).
    pub fn forward_with_targets(
        &self,
        cond: &Tensor,
        codes: &Tensor,
        mask: Option<&Tensor>,
        valid: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let n = codes.size().get(1).copied().unwrap_or(0);
        if n < 1 {
            return Err(ModelError::Input("codes must be [B, N >= 1]".into()));
        }
        let logits = self.forward(cond, &codes.narrow(1, 0, n - 1), mask, train)?;
        let logits = logits.narrow(1, self.config.cls_token_num - 1, n);
        let loss = self.loss(&logits, codes, valid);
        Ok((logits, loss))
    }

    /// [`Gpt::forward_with_targets`] in training mode and its backward pass (of `scale` times
    /// the loss) with activation checkpointing: the forward pass keeps only each block's input [B, L, D], and
    /// the backward pass runs each block again, last first, to backpropagate through it. About
    /// one more forward pass of compute for activations of one block instead of all. Each
    /// block's dropout masks are drawn from `seed` and the block's index in both passes, so the
    /// recomputation sees the masks the first pass used. Returns the loss.
    pub fn backward_checkpointed(
        &self,
        cond: &Tensor,
        codes: &Tensor,
        mask: Option<&Tensor>,
        valid: Option<&Tensor>,
        scale: f64,
        seed: i64,
    ) -> Result<f64, ModelError> {
        let train = true;
        let n = codes.size().get(1).copied().unwrap_or(0);
        if n < 1 {
            return Err(ModelError::Input("codes must be [B, N >= 1]".into()));
        }
        let embedded = self.embed(cond, &codes.narrow(1, 0, n - 1), mask, train)?;
        let len = embedded.size()[1];
        let rope = self.rope.narrow(0, 0, len);
        let block_seed = |i: usize| seed.wrapping_mul(0x5851_F42D).wrapping_add(i as i64 + 1);
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut h = embedded.detach();
        tch::no_grad(|| {
            for (i, layer) in self.layers.iter().enumerate() {
                inputs.push(h.shallow_clone());
                tch::manual_seed(block_seed(i));
                h = layer.forward(&h, &rope, None, mask, train);
            }
        });
        let top = h.detach().set_requires_grad(true);
        let logits = self.head(&top).narrow(1, self.config.cls_token_num - 1, n);
        let loss = self.loss(&logits, codes, valid);
        let value = loss.double_value(&[]);
        (loss * scale).backward();
        let mut grad = top.grad();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let x = inputs[i].detach().set_requires_grad(true);
            tch::manual_seed(block_seed(i));
            let y = layer.forward(&x, &rope, None, mask, train);
            let kind = y.kind();
            (y * &grad).sum(kind).backward();
            grad = x.grad();
        }
        (embedded * &grad).sum(grad.kind()).backward();
        Ok(value)
    }

    /// The training objective's mean cross-entropy of `logits` [B, N, V] against `codes`
    /// [B, N], each sample weighted by `valid` [B] when given.
    fn loss(&self, logits: &Tensor, codes: &Tensor, valid: Option<&Tensor>) -> Tensor {
        let n = codes.size()[1];
        let flat = logits.reshape([-1, self.config.vocab_size]);
        let targets = codes.reshape([-1]);
        match valid {
            // tch's `cross_entropy_for_logits` takes the log-softmax in float32 whatever the
            // logits' kind; the head already made them float32 (float64 in the fp64 mode).
            None => flat.log_softmax(-1, flat.kind()).nll_loss(&targets),
            Some(valid) => {
                let per_token = flat.cross_entropy_loss::<Tensor>(
                    &targets,
                    None,
                    tch::Reduction::None,
                    -100,
                    0.0,
                );
                let kind = per_token.kind();
                let weights = valid
                    .to_kind(kind)
                    .unsqueeze(1)
                    .expand([-1, n], false)
                    .reshape([-1]);
                (per_token * &weights).sum(kind) / weights.sum(kind).clamp_min(1.0)
            }
        }
    }

    /// An empty cache for `batch` sequences of up to [`GptConfig::max_len`] positions, in the
    /// model's dtype and device.
    pub fn new_cache(&self, batch: i64) -> KvCache {
        let capacity = self.config.max_len();
        let shape = [
            batch,
            self.config.kv_heads(),
            capacity,
            self.config.head_dim(),
        ];
        let options = (self.tok_embeddings.kind(), self.tok_embeddings.device());
        KvCache {
            keys: (0..self.layers.len())
                .map(|_| Tensor::zeros(shape, options))
                .collect(),
            values: (0..self.layers.len())
                .map(|_| Tensor::zeros(shape, options))
                .collect(),
            len: 0,
            capacity,
            mask: None,
        }
    }

    /// Runs the condition prefix into an empty `cache`. prefix_mask: [B, cls_token_num] bool,
    /// false at padded caption positions (LlamaGen's `emb_masks`): no position attends to them
    /// except each to itself. Returns logits [B, cls_token_num, V].
    pub fn prefill(
        &self,
        cond: &Tensor,
        cache: &mut KvCache,
        prefix_mask: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        if !cache.is_empty() {
            return Err(ModelError::Input("prefill needs an empty cache".into()));
        }
        let h = self.embed_condition(cond)?;
        let (b, len) = (h.size()[0], h.size()[1]);
        if cache.keys.first().is_some_and(|k| k.size()[0] != b) {
            return Err(ModelError::Input(format!(
                "cache was made for batch {}, got {b}",
                cache.keys[0].size()[0]
            )));
        }
        cache.mask = match prefix_mask {
            None => None,
            Some(m) => {
                if m.size() != [b, len] {
                    return Err(ModelError::Input(format!(
                        "prefix mask must be [{b}, {len}], got {:?}",
                        m.size()
                    )));
                }
                Some(padded_causal_mask(m, cache.capacity))
            }
        };
        self.step(h, cache)
    }

    /// Feeds one image token per sequence ([B, 1] int64) at the next position of `cache`.
    /// Returns logits [B, 1, V].
    pub fn decode_step(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        if cache.is_empty() {
            return Err(ModelError::Input("decode_step before prefill".into()));
        }
        let h = self.embed_tokens(tokens)?;
        self.step(h, cache)
    }

    /// [`Gpt::decode_step`] for tokens this model's logits were sampled into, which are in
    /// range by construction: checking them would read them back to the host every step.
    pub(crate) fn decode_sampled(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        if cache.is_empty() {
            return Err(ModelError::Input("decode_step before prefill".into()));
        }
        let h = self.embed_sampled(tokens);
        self.step(h, cache)
    }

    fn step(&self, h: Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let (start, len) = (cache.len, h.size()[1]);
        if start + len > cache.capacity {
            return Err(ModelError::Input(format!(
                "cache holds {} positions; cannot add {len} after {start}",
                cache.capacity
            )));
        }
        let rope = self.rope.narrow(0, start, len);
        let mask = cache.mask_rows(start, len);
        let h = self.through_cached_layers(h, &rope, cache, Position::From(start), mask.as_ref());
        cache.len += len;
        Ok(self.head(&h))
    }

    /// The decode step at fixed shapes, as a CUDA graph records it: feeds one image token per
    /// sequence (tokens: [B, 1] int64) at the position held in `position` ([1] int64 on the
    /// model's device) and attends over the cache's whole capacity under a mask, so that no
    /// value is read back to the host and every call has the same shapes and addresses.
    ///
    /// The tokens are not range-checked (that would read them back): they must come from
    /// sampling this model's logits. The step writes the cache in place and leaves `position`
    /// and [`KvCache::len`] as they were; the caller advances `position` (on the device) and
    /// stays below the capacity. Returns logits [B, 1, V].
    pub fn decode_step_at(
        &self,
        tokens: &Tensor,
        position: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        if cache.is_empty() {
            return Err(ModelError::Input("decode_step_at before prefill".into()));
        }
        let batch = cache.keys.first().map_or(0, |k| k.size()[0]);
        if tokens.size() != [batch, 1] || tokens.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!(
                "decode_step_at takes [{batch}, 1] int64 tokens, got {:?} {:?}",
                tokens.size(),
                tokens.kind()
            )));
        }
        if position.size() != [1] || position.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!(
                "the decode position must be a [1] int64 tensor, got {:?} {:?}",
                position.size(),
                position.kind()
            )));
        }
        let h = self.embed_sampled(tokens);
        let rope = self.rope.index_select(0, position);
        let capacity = cache.capacity;
        // [B or 1, 1, 1, capacity]: the prefix's padding and causality from the prefill's
        // mask, else every position up to this one.
        let mask = match &cache.mask {
            Some(m) => m.index_select(2, position),
            None => Tensor::arange(capacity, (Kind::Int64, position.device()))
                .le_tensor(position)
                .view([1, 1, 1, capacity]),
        };
        let h = self.through_cached_layers(h, &rope, cache, Position::At(position), Some(&mask));
        Ok(self.head(&h))
    }

    /// A block of image tokens per sequence, each sequence at its own positions, as speculative
    /// decoding feeds them: tokens [B, L] int64 (sampled from this model, so not range-checked)
    /// go to `positions` [B, L] int64 (below the cache's capacity, on the model's device).
    /// Every row attends over the cache's whole capacity under a mask that lets it see the
    /// positions up to its own (and not the prefix's padding), so a row reads the keys this call
    /// writes before it and whatever the cache holds below; what lies above a sequence's own
    /// rows is never read until written again. Leaves [`KvCache::len`] as it was.
    /// Returns logits [B, L, V].
    pub(crate) fn decode_rows(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        if cache.is_empty() {
            return Err(ModelError::Input("decode_rows before prefill".into()));
        }
        let batch = cache.keys.first().map_or(0, |k| k.size()[0]);
        let (b, l) = tokens
            .size2()
            .map_err(|e| ModelError::Input(e.to_string()))?;
        if b != batch || positions.size() != [b, l] || positions.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!(
                "decode_rows takes [{batch}, L] tokens and int64 positions of the same shape, \
                 got {:?} and {:?} {:?}",
                tokens.size(),
                positions.size(),
                positions.kind()
            )));
        }
        let h = self.embed_sampled(tokens);
        let capacity = cache.capacity;
        // [B, L, Dh/2, 2]
        let rope = self
            .rope
            .index_select(0, &positions.reshape([-1]))
            .view([b, l, -1, 2]);
        // [B, 1, L, capacity]
        let mask = match &cache.mask {
            Some(m) => m.gather(
                2,
                &positions
                    .view([b, 1, l, 1])
                    .expand([b, 1, l, capacity], false),
                false,
            ),
            None => Tensor::arange(capacity, (Kind::Int64, positions.device()))
                .view([1, 1, 1, capacity])
                .le_tensor(&positions.view([b, 1, l, 1])),
        };
        let h = self.through_cached_layers(h, &rope, cache, Position::Rows(positions), Some(&mask));
        Ok(self.head(&h))
    }

    /// Every block in inference mode, each writing its keys and values into its layer of
    /// `cache` at `at`. h: [B, L, D] -> [B, L, D].
    fn through_cached_layers(
        &self,
        mut h: Tensor,
        rope: &Tensor,
        cache: &mut KvCache,
        at: Position<'_>,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let caches = cache.keys.iter_mut().zip(cache.values.iter_mut());
        for (layer, (keys, values)) in self.layers.iter().zip(caches) {
            let write = CacheWrite { keys, values, at };
            h = layer.forward(&h, rope, Some(write), mask, false);
        }
        h
    }
}

/// LlamaGen's inference mask: causal, with padded prefix columns switched off for every row
/// and the diagonal always on. prefix: [B, T] bool. Returns [B, 1, capacity, capacity] bool.
fn padded_causal_mask(prefix: &Tensor, capacity: i64) -> Tensor {
    let device = prefix.device();
    let (b, t) = (prefix.size()[0], prefix.size()[1]);
    let causal = Tensor::ones([capacity, capacity], (Kind::Bool, device)).tril(0);
    let columns = Tensor::cat(
        &[
            prefix.to_kind(Kind::Bool),
            Tensor::ones([b, capacity - t], (Kind::Bool, device)),
        ],
        1,
    );
    let eye = Tensor::eye(capacity, (Kind::Bool, device));
    (causal.unsqueeze(0) * columns.unsqueeze(1))
        .logical_or(&eye.unsqueeze(0))
        .unsqueeze(1)
}

/// The order a backward pass finishes the gradients of parameters named as above (indices into
/// `names`): the head (`output`, `norm`) first, then the layers from the last to the first
/// (within one, the feed-forward before the attention), then the embeddings. Data parallelism
/// fills and numbers its gradient buckets in this order, so that the first bucket is complete
/// first and its reduction runs under the rest of the backward pass. Only the order of the
/// communication depends on it, never a value.
pub fn gradient_ready_order(names: &[&str]) -> Vec<usize> {
    let key = |i: usize| {
        let name = names[i];
        let (stage, layer, part) = if name.starts_with("output.") || name.starts_with("norm.") {
            (0, 0, 0)
        } else if let Some(rest) = name.strip_prefix("layers.") {
            let (index, part) = rest.split_once('.').unwrap_or((rest, ""));
            let within = [
                "feed_forward.w2",
                "feed_forward.w1",
                "feed_forward.w3",
                "ffn_norm",
                "attention.wo",
                "attention.wqkv",
                "attention_norm",
            ]
            .iter()
            .position(|p| part.starts_with(p))
            .unwrap_or(7);
            (1, -index.parse::<i64>().unwrap_or(0), within)
        } else {
            (2, 0, 0)
        };
        (stage, layer, part, std::cmp::Reverse(i))
    };
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&i| key(i));
    order
}

/// LlamaGen's 2D RoPE table: half of each head's rotary pairs turn with the token's row, half
/// with its column; the `prefix` condition positions get all-zero entries.
/// Returns [prefix + grid^2, head_dim / 2, 2] (cos, sin), f32 on the CPU.
pub fn rope_2d(grid: i64, head_dim: i64, base: f64, prefix: i64) -> Tensor {
    let half = head_dim / 2;
    let exponent = Tensor::arange_start_step(0, half, 2, (Kind::Float, tch::Device::Cpu)).narrow(
        0,
        0,
        half / 2,
    ) / half as f64;
    let freqs = Tensor::pow_scalar(base, &exponent).reciprocal();
    let t = Tensor::arange(grid, (Kind::Float, tch::Device::Cpu));
    let freqs = t.outer(&freqs); // [grid, half/2]
    let q = half / 2;
    let grid_freqs = Tensor::cat(
        &[
            freqs.unsqueeze(1).expand([grid, grid, q], false),
            freqs.unsqueeze(0).expand([grid, grid, q], false),
        ],
        -1,
    ); // [grid, grid, half]
    let table = Tensor::stack(&[grid_freqs.cos(), grid_freqs.sin()], -1).flatten(0, 1);
    Tensor::cat(
        &[
            Tensor::zeros([prefix, half, 2], (Kind::Float, tch::Device::Cpu)),
            table,
        ],
        0,
    )
}

/// Rotates pairs (x[2i], x[2i+1]) of x: [B, L, H, Dh] by rope: [L, Dh/2, 2] (or, per
/// sequence, [B, L, Dh/2, 2]), computing in f32 (f64 for f64 activations).
fn apply_rope(x: &Tensor, rope: &Tensor) -> Tensor {
    let (b, l, h, d) = x.size4().expect("rope input is [B, L, H, Dh]");
    let pairs = x.to_kind(upcast(x.kind())).reshape([b, l, h, d / 2, 2]);
    // [L, Dh/2, 2] shared by the batch, or [B, L, Dh/2, 2] per sequence.
    let rope = if rope.dim() == 4 {
        rope.view([b, l, 1, d / 2, 2])
    } else {
        rope.view([1, l, 1, d / 2, 2])
    };
    let (x0, x1) = (pairs.select(-1, 0), pairs.select(-1, 1));
    let (cos, sin) = (rope.select(-1, 0), rope.select(-1, 1));
    let rotated = Tensor::stack(&[&x0 * &cos - &x1 * &sin, &x1 * &cos + &x0 * &sin], -1);
    rotated.flatten(3, -1).to_kind(x.kind())
}

/// The kind LlamaGen's `.float()` casts to: float32, except that float64 activations (the
/// trainer's fp64 mode, for checking) stay float64 rather than lose precision.
fn upcast(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_are_ready_from_the_head_down() {
        let names = [
            "cls_embedding.embedding_table.weight",
            "layers.0.attention.wqkv.weight",
            "layers.0.feed_forward.w2.weight",
            "layers.1.attention_norm.weight",
            "layers.10.feed_forward.w1.weight",
            "layers.2.feed_forward.w2.weight",
            "norm.weight",
            "output.weight",
            "tok_embeddings.weight",
        ];
        let order: Vec<&str> = gradient_ready_order(&names)
            .into_iter()
            .map(|i| names[i])
            .collect();
        assert_eq!(
            order,
            [
                "output.weight",
                "norm.weight",
                "layers.10.feed_forward.w1.weight",
                "layers.2.feed_forward.w2.weight",
                "layers.1.attention_norm.weight",
                "layers.0.feed_forward.w2.weight",
                "layers.0.attention.wqkv.weight",
                "tok_embeddings.weight",
                "cls_embedding.embedding_table.weight",
            ]
        );
    }

    #[test]
    fn ffn_width_matches_llamagen_sizes() {
        // Values computed with LlamaGen's find_multiple(int(2 * 4 * dim / 3), 256).
        let widths: Vec<i64> = SIZES
            .iter()
            .map(|(_, l, h, d)| GptConfig::new(*l, *h, *d, Conditioning::Class).ffn_hidden())
            .collect();
        assert_eq!(
            widths,
            vec![2048, 2816, 3584, 4096, 6912, 5632, 8704, 11008]
        );
    }

    #[test]
    fn rope_prefix_is_zero_and_grid_rows_rotate_first_half() {
        let table = rope_2d(4, 16, 10000.0, 3);
        assert_eq!(table.size(), [3 + 16, 8, 2]);
        assert_eq!(
            table
                .narrow(0, 0, 3)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        // Token (row 1, col 0) turns only its first half; token (row 0, col 1) only its second.
        let row1 = table.get(3 + 4);
        let col1 = table.get(3 + 1);
        assert!(
            row1.narrow(0, 0, 4)
                .select(-1, 1)
                .abs()
                .min()
                .double_value(&[])
                > 0.0
        );
        assert_eq!(
            row1.narrow(0, 4, 4)
                .select(-1, 1)
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
        assert_eq!(
            col1.narrow(0, 0, 4)
                .select(-1, 1)
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
        // The first frequency is 1 radian per step: sin(1) at row 1.
        assert!((row1.double_value(&[0, 1]) - 1f64.sin()).abs() < 1e-6);
    }

    #[test]
    fn named_sizes_and_bad_configs() {
        let b = GptConfig::named("gpt-b", Conditioning::Class, 16).unwrap();
        assert_eq!(
            (b.n_layer, b.n_head, b.dim, b.block_size),
            (12, 12, 768, 256)
        );
        // The pipeline config's spelling names the same model.
        let xl = GptConfig::named("XL", Conditioning::Class, 16).unwrap();
        assert_eq!((xl.n_layer, xl.dim), (36, 1280));
        let err = GptConfig::named("GPT-Z", Conditioning::Class, 16).unwrap_err();
        assert!(err.to_string().contains("GPT-XXL"), "{err}");
        let mut bad = b.clone();
        bad.block_size = 250;
        assert!(bad.validate().unwrap_err().to_string().contains("square"));
        let mut bad = b;
        bad.n_kv_head = Some(5);
        assert!(bad.validate().is_err());
    }
}
