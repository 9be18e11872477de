//! LlamaGen's image tokenizer: a VQGAN encoder, an l2-normalised codebook and a decoder
//! (`tokenizer/tokenizer_image/vq_model.py`), with the reference's state-dict names:
//!
//! ```text
//! encoder.conv_in, encoder.conv_blocks.{i}.res.{j}.{norm1,conv1,norm2,conv2,nin_shortcut},
//! encoder.conv_blocks.{i}.attn.{j}.{norm,q,k,v,proj_out}, encoder.conv_blocks.{i}.downsample.conv,
//! encoder.mid.{0,1,2}, encoder.norm_out, encoder.conv_out      (decoder.* mirrors it, upsample.conv)
//! quant_conv, post_quant_conv, quantize.embedding.weight [K, C], quantize.codebook_used [65536]
//! ```
//!
//! Images are [B, 3, H, W] in [-1, 1]; codes are [B, H/f, W/f] int64 with f = 2^(levels - 1).

use tch::{Kind, Tensor, nn, nn::Module};

use crate::ModelError;

/// The reference's usage window: the last 65536 code indices seen in training.
pub const USAGE_WINDOW: i64 = 65536;

/// Tokenizer hyper-parameters; names and defaults of LlamaGen's VQ `ModelArgs`, plus the widths
/// it fixes inside Encoder/Decoder (`ch` 128, two residual blocks per level).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqConfig {
    pub codebook_size: i64,
    pub codebook_embed_dim: i64,
    pub codebook_l2_norm: bool,
    pub codebook_show_usage: bool,
    pub commit_loss_beta: f64,
    pub entropy_loss_ratio: f64,
    pub encoder_ch_mult: Vec<i64>,
    pub decoder_ch_mult: Vec<i64>,
    pub z_channels: i64,
    pub ch: i64,
    pub num_res_blocks: i64,
    pub dropout_p: f64,
}

impl VqConfig {
    /// `VQ-16`: downsample 16, the paper's tokenizer.
    pub fn vq16() -> Self {
        VqConfig {
            codebook_size: 16384,
            codebook_embed_dim: 8,
            codebook_l2_norm: true,
            codebook_show_usage: true,
            commit_loss_beta: 0.25,
            entropy_loss_ratio: 0.0,
            encoder_ch_mult: vec![1, 1, 2, 2, 4],
            decoder_ch_mult: vec![1, 1, 2, 2, 4],
            z_channels: 256,
            ch: 128,
            num_res_blocks: 2,
            dropout_p: 0.0,
        }
    }

    /// `VQ-8`: downsample 8.
    pub fn vq8() -> Self {
        VqConfig {
            encoder_ch_mult: vec![1, 2, 2, 4],
            decoder_ch_mult: vec![1, 2, 2, 4],
            ..VqConfig::vq16()
        }
    }

    /// `VQ-16` or `VQ-8`.
    pub fn named(name: &str) -> Result<Self, ModelError> {
        match name.to_ascii_uppercase().as_str() {
            "VQ-16" => Ok(VqConfig::vq16()),
            "VQ-8" => Ok(VqConfig::vq8()),
            _ => Err(ModelError::Config(format!(
                "unknown VQ model {name:?}; known: VQ-16, VQ-8"
            ))),
        }
    }

    /// Pixels per code along each side.
    pub fn downsample(&self) -> i64 {
        1 << (self.encoder_ch_mult.len().max(1) - 1)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let widths = self
            .encoder_ch_mult
            .iter()
            .chain(&self.decoder_ch_mult)
            .map(|m| m * self.ch);
        if self.encoder_ch_mult.is_empty() || self.decoder_ch_mult.is_empty() {
            return Err(ModelError::Config("channel multipliers are empty".into()));
        }
        if self.encoder_ch_mult.len() != self.decoder_ch_mult.len() {
            return Err(ModelError::Config(
                "encoder and decoder need as many levels (same downsample)".into(),
            ));
        }
        for w in widths.chain([self.ch]) {
            if w <= 0 || w % 32 != 0 {
                return Err(ModelError::Config(format!(
                    "channel width {w} is not a positive multiple of 32 (GroupNorm groups)"
                )));
            }
        }
        if self.codebook_size <= 0 || self.codebook_embed_dim <= 0 || self.z_channels <= 0 {
            return Err(ModelError::Config(
                "codebook and z sizes must be positive".into(),
            ));
        }
        Ok(())
    }
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, config)
}

fn group_norm(p: nn::Path, channels: i64) -> nn::GroupNorm {
    let config = nn::GroupNormConfig {
        eps: 1e-6,
        ..Default::default()
    };
    nn::group_norm(p, 32, channels, config)
}

struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    nin_shortcut: Option<nn::Conv2D>,
    dropout_p: f64,
}

impl ResnetBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, dropout_p: f64) -> Self {
        ResnetBlock {
            norm1: group_norm(&p / "norm1", c_in),
            conv1: conv(&p / "conv1", c_in, c_out, 3, 1, 1),
            norm2: group_norm(&p / "norm2", c_out),
            conv2: conv(&p / "conv2", c_out, c_out, 3, 1, 1),
            nin_shortcut: (c_in != c_out).then(|| conv(&p / "nin_shortcut", c_in, c_out, 1, 1, 0)),
            dropout_p,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = self
            .conv2
            .forward(&self.norm2.forward(&h).silu().dropout(self.dropout_p, train));
        match &self.nin_shortcut {
            Some(shortcut) => shortcut.forward(x) + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over all H x W positions.
struct AttnBlock {
    norm: nn::GroupNorm,
    q: nn::Conv2D,
    k: nn::Conv2D,
    v: nn::Conv2D,
    proj_out: nn::Conv2D,
}

impl AttnBlock {
    fn new(p: nn::Path, c: i64) -> Self {
        AttnBlock {
            norm: group_norm(&p / "norm", c),
            q: conv(&p / "q", c, c, 1, 1, 0),
            k: conv(&p / "k", c, c, 1, 1, 0),
            v: conv(&p / "v", c, c, 1, 1, 0),
            proj_out: conv(&p / "proj_out", c, c, 1, 1, 0),
        }
    }

    /// [B, C, H, W] -> [B, C, H, W].
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("attention input is [B, C, H, W]");
        let n = self.norm.forward(x);
        let q = self.q.forward(&n).reshape([b, c, h * w]).permute([0, 2, 1]);
        let k = self.k.forward(&n).reshape([b, c, h * w]);
        let v = self.v.forward(&n).reshape([b, c, h * w]);
        let weights = (q.bmm(&k) * (c as f64).powf(-0.5)).softmax(2, x.kind());
        let out = v.bmm(&weights.permute([0, 2, 1])).reshape([b, c, h, w]);
        x + self.proj_out.forward(&out)
    }
}

struct Level {
    res: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    /// Downsample (encoder) or upsample (decoder) conv; absent on the last level.
    resample: Option<nn::Conv2D>,
}

impl Level {
    fn forward(&self, mut h: Tensor, train: bool) -> Tensor {
        for (i, res) in self.res.iter().enumerate() {
            h = res.forward(&h, train);
            if let Some(attn) = self.attn.get(i) {
                h = attn.forward(&h);
            }
        }
        h
    }
}

fn mid(p: nn::Path, c: i64, dropout_p: f64) -> (ResnetBlock, AttnBlock, ResnetBlock) {
    (
        ResnetBlock::new(&p / 0, c, c, dropout_p),
        AttnBlock::new(&p / 1, c),
        ResnetBlock::new(&p / 2, c, c, dropout_p),
    )
}

struct Encoder {
    conv_in: nn::Conv2D,
    levels: Vec<Level>,
    mid: (ResnetBlock, AttnBlock, ResnetBlock),
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    fn new(p: nn::Path, c: &VqConfig) -> Self {
        let n = c.encoder_ch_mult.len();
        let mut block_in = c.ch;
        let levels = (0..n)
            .map(|i| {
                let lp = &p / "conv_blocks" / i;
                let block_out = c.ch * c.encoder_ch_mult[i];
                let mut res = Vec::new();
                let mut attn = Vec::new();
                for j in 0..c.num_res_blocks {
                    res.push(ResnetBlock::new(
                        &lp / "res" / j,
                        block_in,
                        block_out,
                        c.dropout_p,
                    ));
                    block_in = block_out;
                    if i == n - 1 {
                        attn.push(AttnBlock::new(&lp / "attn" / j, block_in));
                    }
                }
                let resample = (i != n - 1)
                    .then(|| conv(&lp / "downsample" / "conv", block_in, block_in, 3, 2, 0));
                Level {
                    res,
                    attn,
                    resample,
                }
            })
            .collect();
        Encoder {
            conv_in: conv(&p / "conv_in", 3, c.ch, 3, 1, 1),
            levels,
            mid: mid(&p / "mid", block_in, c.dropout_p),
            norm_out: group_norm(&p / "norm_out", block_in),
            conv_out: conv(&p / "conv_out", block_in, c.z_channels, 3, 1, 1),
        }
    }

    /// [B, 3, H, W] -> [B, z_channels, H/f, W/f].
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for level in &self.levels {
            h = level.forward(h, train);
            if let Some(down) = &level.resample {
                // Asymmetric padding (right and bottom only), as the reference.
                h = down.forward(&h.constant_pad_nd([0, 1, 0, 1]));
            }
        }
        let h = self.mid.0.forward(&h, train);
        let h = self.mid.1.forward(&h);
        let h = self.mid.2.forward(&h, train);
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

struct Decoder {
    conv_in: nn::Conv2D,
    mid: (ResnetBlock, AttnBlock, ResnetBlock),
    levels: Vec<Level>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    fn new(p: nn::Path, c: &VqConfig) -> Self {
        let n = c.decoder_ch_mult.len();
        let mut block_in = c.ch * c.decoder_ch_mult[n - 1];
        let conv_in = conv(&p / "conv_in", c.z_channels, block_in, 3, 1, 1);
        let mid = mid(&p / "mid", block_in, c.dropout_p);
        // conv_blocks.0 is the deepest level: the reference iterates the multipliers reversed.
        let levels = (0..n)
            .rev()
            .enumerate()
            .map(|(index, level)| {
                let lp = &p / "conv_blocks" / index;
                let block_out = c.ch * c.decoder_ch_mult[level];
                let mut res = Vec::new();
                let mut attn = Vec::new();
                for j in 0..=c.num_res_blocks {
                    res.push(ResnetBlock::new(
                        &lp / "res" / j,
                        block_in,
                        block_out,
                        c.dropout_p,
                    ));
                    block_in = block_out;
                    if level == n - 1 {
                        attn.push(AttnBlock::new(&lp / "attn" / j, block_in));
                    }
                }
                let resample = (level != 0)
                    .then(|| conv(&lp / "upsample" / "conv", block_in, block_in, 3, 1, 1));
                Level {
                    res,
                    attn,
                    resample,
                }
            })
            .collect();
        Decoder {
            conv_in,
            mid,
            levels,
            norm_out: group_norm(&p / "norm_out", block_in),
            conv_out: conv(&p / "conv_out", block_in, 3, 3, 1, 1),
        }
    }

    /// [B, z_channels, h, w] -> [B, 3, h f, w f].
    fn forward(&self, z: &Tensor, train: bool) -> Tensor {
        let h = self.conv_in.forward(z);
        let h = self.mid.0.forward(&h, train);
        let h = self.mid.1.forward(&h);
        let mut h = self.mid.2.forward(&h, train);
        for level in &self.levels {
            h = level.forward(h, train);
            if let Some(up) = &level.resample {
                let (_, _, height, width) = h.size4().expect("decoder activations are 4-d");
                h = up.forward(&h.upsample_nearest2d([height * 2, width * 2], 2.0, 2.0));
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

/// What quantization produced for a batch.
pub struct Quantized {
    /// [B, C, h, w] codebook vectors, with straight-through gradients to the encoder.
    pub quant: Tensor,
    /// [B, h, w] int64 code indices.
    pub codes: Tensor,
    /// mean((z_q - sg(z))^2); only when training.
    pub codebook_loss: Option<Tensor>,
    /// beta * mean((sg(z_q) - z)^2); only when training.
    pub commit_loss: Option<Tensor>,
    /// The reference's entropy regulariser times its ratio; only when training.
    pub entropy_loss: Option<Tensor>,
    /// Distinct codes in the usage window over the codebook size; only when training.
    pub codebook_usage: Option<f64>,
}

/// A LlamaGen VQ tokenizer whose weights live in the `nn::Path` it was built on.
pub struct VqModel {
    pub config: VqConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: nn::Conv2D,
    post_quant_conv: nn::Conv2D,
    /// [K, C] as stored; normalised on use when `codebook_l2_norm`.
    embedding: Tensor,
    /// [65536] recent code indices (as floats, like the reference's buffer).
    codebook_used: Option<Tensor>,
}

impl VqModel {
    pub fn new(p: &nn::Path, config: VqConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let (k, c) = (config.codebook_size, config.codebook_embed_dim);
        let q = p / "quantize";
        let mut embedding = (&q / "embedding").var(
            "weight",
            &[k, c],
            nn::Init::Uniform {
                lo: -1.0 / k as f64,
                up: 1.0 / k as f64,
            },
        );
        if config.codebook_l2_norm {
            tch::no_grad(|| {
                let normalised = l2_normalize(&embedding);
                embedding.copy_(&normalised);
            });
        }
        let codebook_used = config
            .codebook_show_usage
            .then(|| q.zeros_no_train("codebook_used", &[USAGE_WINDOW]));
        Ok(VqModel {
            encoder: Encoder::new(p / "encoder", &config),
            decoder: Decoder::new(p / "decoder", &config),
            quant_conv: conv(p / "quant_conv", config.z_channels, c, 1, 1, 0),
            post_quant_conv: conv(p / "post_quant_conv", c, config.z_channels, 1, 1, 0),
            embedding,
            codebook_used,
            config,
        })
    }

    fn codebook(&self) -> Tensor {
        if self.config.codebook_l2_norm {
            l2_normalize(&self.embedding)
        } else {
            self.embedding.shallow_clone()
        }
    }

    fn check_images(&self, images: &Tensor) -> Result<(), ModelError> {
        let size = images.size();
        let f = self.config.downsample();
        if size.len() != 4 || size[1] != 3 || size[2] % f != 0 || size[3] % f != 0 {
            return Err(ModelError::Input(format!(
                "images must be [B, 3, H, W] with H and W multiples of {f}, got {size:?}"
            )));
        }
        if !images.is_floating_point() {
            return Err(ModelError::Input(
                "images must be floating point in [-1, 1]".into(),
            ));
        }
        Ok(())
    }

    /// Encoder and quantizer. images: [B, 3, H, W] in [-1, 1]. In training mode the losses are
    /// computed and the usage window advances.
    pub fn encode(&self, images: &Tensor, train: bool) -> Result<Quantized, ModelError> {
        self.check_images(images)?;
        let z = self
            .quant_conv
            .forward(&self.encoder.forward(images, train));
        Ok(self.quantize(&z, train))
    }

    /// Nearest codebook entry per position of z: [B, C, h, w].
    pub fn quantize(&self, z: &Tensor, train: bool) -> Quantized {
        let (b, c, h, w) = z.size4().expect("quantizer input is [B, C, h, w]");
        let mut z = z.permute([0, 2, 3, 1]).contiguous();
        let codebook = self.codebook();
        if self.config.codebook_l2_norm {
            z = l2_normalize(&z);
        }
        let flat = z.view([-1, c]);
        let acc = crate::accumulation(&flat);
        let distances = flat.square().sum_dim_intlist(1, true, acc)
            + codebook.square().sum_dim_intlist(1, false, acc)
            - flat.matmul(&codebook.tr()) * 2.0;
        let indices = distances.argmin(1, false);
        let z_q = codebook.index_select(0, &indices).view([b, h, w, c]);

        let (mut codebook_loss, mut commit_loss, mut entropy_loss, mut usage) =
            (None, None, None, None);
        if train {
            if let Some(used) = &self.codebook_used {
                usage = Some(advance_usage(used, &indices, self.config.codebook_size));
            }
            codebook_loss = Some((&z_q - z.detach()).square().mean(acc));
            commit_loss =
                Some((z_q.detach() - &z).square().mean(acc) * self.config.commit_loss_beta);
            // At ratio 0 (LlamaGen's default) the reference still computes the term, a softmax
            // over [positions, codebook] and its backward pass, and multiplies it by 0; the
            // same zero costs nothing here.
            entropy_loss = Some(if self.config.entropy_loss_ratio == 0.0 {
                Tensor::zeros([], (distances.kind(), distances.device()))
            } else {
                entropy_loss_of(&(-&distances)) * self.config.entropy_loss_ratio
            });
        }
        let straight_through = &z + (&z_q - &z).detach();
        Quantized {
            quant: straight_through.permute([0, 3, 1, 2]),
            codes: indices.view([b, h, w]),
            codebook_loss,
            commit_loss,
            entropy_loss,
            codebook_usage: usage,
        }
    }

    /// quant: [B, C, h, w] -> images [B, 3, h f, w f] in (about) [-1, 1].
    pub fn decode(&self, quant: &Tensor, train: bool) -> Tensor {
        self.decoder
            .forward(&self.post_quant_conv.forward(quant), train)
    }

    /// codes: [B, h, w] (or [B, h * w] for square grids) int64 -> images [B, 3, h f, w f].
    pub fn decode_codes(&self, codes: &Tensor) -> Result<Tensor, ModelError> {
        let codes = match codes.size().as_slice() {
            [_, _, _] => codes.shallow_clone(),
            [b, n] => {
                let side = (*n as f64).sqrt().round() as i64;
                if side * side != *n {
                    return Err(ModelError::Input(format!(
                        "{n} codes per image do not form a square grid"
                    )));
                }
                codes.view([*b, side, side])
            }
            other => {
                return Err(ModelError::Input(format!(
                    "codes must be [B, h, w] or [B, h*w], got {other:?}"
                )));
            }
        };
        if codes.numel() > 0 {
            let (lo, hi) = (codes.min().int64_value(&[]), codes.max().int64_value(&[]));
            if lo < 0 || hi >= self.config.codebook_size {
                return Err(ModelError::Input(format!(
                    "codes must lie in 0..{}, got {lo}..={hi}",
                    self.config.codebook_size
                )));
            }
        }
        let quant = self
            .codebook()
            .index_select(0, &codes.to_kind(Kind::Int64).reshape([-1]))
            .view([codes.size()[0], codes.size()[1], codes.size()[2], -1])
            .permute([0, 3, 1, 2])
            .contiguous();
        Ok(self.decode(&quant, false))
    }

    /// The decoder's last convolution weight [3, C, 3, 3] (the adaptive adversarial weight's
    /// reference point).
    pub fn last_layer(&self) -> &Tensor {
        &self.decoder.conv_out.ws
    }

    /// Encode then decode (the reconstruction that rFID, PSNR and SSIM measure).
    /// Returns (reconstruction [B, 3, H, W], the quantization).
    pub fn reconstruct(
        &self,
        images: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Quantized), ModelError> {
        let q = self.encode(images, train)?;
        Ok((self.decode(&q.quant, train), q))
    }
}

fn l2_normalize(x: &Tensor) -> Tensor {
    // F.normalize: x / max(||x||, 1e-12).
    let norm = x
        .square()
        .sum_dim_intlist(-1, true, x.kind())
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

/// Shifts `indices` into the end of the usage window and returns the distinct-code fraction.
fn advance_usage(window: &Tensor, indices: &Tensor, codebook_size: i64) -> f64 {
    tch::no_grad(|| {
        let window = window.shallow_clone();
        let n = indices.size()[0].min(USAGE_WINDOW);
        let recent = indices
            .narrow(0, indices.size()[0] - n, n)
            .to_kind(window.kind());
        let kept = window.narrow(0, n, USAGE_WINDOW - n).copy();
        window.narrow(0, 0, USAGE_WINDOW - n).copy_(&kept);
        window.narrow(0, USAGE_WINDOW - n, n).copy_(&recent);
        let (distinct, _) = window.internal_unique(false, false);
        distinct.size()[0] as f64 / codebook_size as f64
    })
}

/// The reference's `compute_entropy_loss` (softmax affinities at temperature 0.01): per-sample
/// entropy minus the entropy of the average assignment. affinity: [N, K].
fn entropy_loss_of(affinity: &Tensor) -> Tensor {
    let acc = crate::accumulation(affinity);
    let a = affinity / 0.01;
    let probs = a.softmax(-1, acc);
    let log_probs = (&a + 1e-5).log_softmax(-1, acc);
    let avg = probs.mean_dim(0, false, acc);
    let avg_entropy = -(&avg * (&avg + 1e-5).log()).sum(acc);
    let sample_entropy = -(&probs * log_probs)
        .sum_dim_intlist(-1, false, acc)
        .mean(acc);
    sample_entropy - avg_entropy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_validation() {
        assert_eq!(VqConfig::vq16().downsample(), 16);
        assert_eq!(VqConfig::named("vq-8").unwrap().downsample(), 8);
        assert!(VqConfig::named("VQ-4").is_err());
        let bad = VqConfig {
            ch: 48,
            ..VqConfig::vq16()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("multiple of 32")
        );
    }

    #[test]
    fn usage_window_keeps_the_latest_codes() {
        let window = Tensor::zeros([USAGE_WINDOW], (Kind::Float, tch::Device::Cpu));
        let usage = advance_usage(&window, &Tensor::from_slice(&[3i64, 4, 4, 5]), 16);
        // Codes 3, 4, 5 plus the prefilled zeros, as the reference counts them.
        assert_eq!(usage, 4.0 / 16.0);
        assert_eq!(window.double_value(&[USAGE_WINDOW - 1]), 5.0);
        assert_eq!(window.double_value(&[USAGE_WINDOW - 4]), 3.0);
    }
}
