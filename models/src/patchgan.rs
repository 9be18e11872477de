//! The PatchGAN discriminator of LlamaGen's tokenizer training
//! (`tokenizer/tokenizer_image/discriminator_patchgan.py`, pix2pix's `NLayerDiscriminator`):
//! 4x4 convolutions, LeakyReLU 0.2 and batch norm, ending in one logit per image patch.
//!
//! Tensor names are the reference's state dict (`main.{i}` follows its `nn.Sequential`); with
//! three layers and 64 channels:
//!
//! ```text
//! main.0   conv 3 -> 64, stride 2, bias       main.1  LeakyReLU
//! main.2   conv 64 -> 128, stride 2           main.3  batch norm   main.4  LeakyReLU
//! main.5   conv 128 -> 256, stride 2          main.6  batch norm   main.7  LeakyReLU
//! main.8   conv 256 -> 512, stride 1          main.9  batch norm   main.10 LeakyReLU
//! main.11  conv 512 -> 1, stride 1, bias
//! ```
//!
//! Batch norms keep PyTorch's `running_mean`, `running_var` and `num_batches_tracked`.

use tch::{Kind, Tensor, nn, nn::Module};

/// The discriminator's size; defaults are LlamaGen's (`disc_num_layers` 3, `disc_dim` 64).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchGanConfig {
    pub input_channels: i64,
    /// Channels of the first convolution (`ndf`); each stride-2 layer doubles them, up to 8x.
    pub channels: i64,
    /// Stride-2 convolutions after the first (`n_layers`).
    pub layers: i64,
}

impl Default for PatchGanConfig {
    fn default() -> Self {
        PatchGanConfig {
            input_channels: 3,
            channels: 64,
            layers: 3,
        }
    }
}

const KERNEL: i64 = 4;
const SLOPE: f64 = 0.2;
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// PyTorch's `BatchNorm2d`, counting its batches as PyTorch's state dict does.
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

impl BatchNorm {
    fn new(p: nn::Path, c: i64) -> Self {
        BatchNorm {
            weight: p.var(
                "weight",
                &[c],
                nn::Init::Randn {
                    mean: 1.0,
                    stdev: 0.02,
                },
            ),
            bias: p.zeros("bias", &[c]),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            num_batches_tracked: p.add(
                "num_batches_tracked",
                Tensor::zeros([], (Kind::Int64, p.device())),
                false,
            ),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            false,
        )
    }
}

struct Layer {
    conv: nn::Conv2D,
    norm: Option<BatchNorm>,
    activation: bool,
}

/// A PatchGAN discriminator whose weights live in the `nn::Path` it was built on.
pub struct PatchGan {
    pub config: PatchGanConfig,
    layers: Vec<Layer>,
}

impl PatchGan {
    /// Initialised as the reference does: convolution weights N(0, 0.02), norm scales
    /// N(1, 0.02), norm shifts 0, convolution biases PyTorch's default.
    pub fn new(p: &nn::Path, config: PatchGanConfig) -> Self {
        let main = p / "main";
        let mut layers = Vec::new();
        let mut index = 0usize;
        let conv = |index: usize, c_in: i64, c_out: i64, stride: i64, bias: bool| {
            let config = nn::ConvConfig {
                stride,
                padding: 1,
                bias,
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                ..Default::default()
            };
            nn::conv2d(&main / index, c_in, c_out, KERNEL, config)
        };
        let ndf = config.channels;
        layers.push(Layer {
            conv: conv(index, config.input_channels, ndf, 2, true),
            norm: None,
            activation: true,
        });
        index += 2;
        let mut mult = 1;
        for n in 1..=config.layers {
            let previous = mult;
            mult = (1i64 << n.min(3)).min(8);
            // The last of these convolutions keeps the resolution.
            let stride = if n == config.layers { 1 } else { 2 };
            layers.push(Layer {
                conv: conv(index, ndf * previous, ndf * mult, stride, false),
                norm: Some(BatchNorm::new(&main / (index + 1), ndf * mult)),
                activation: true,
            });
            index += 3;
        }
        layers.push(Layer {
            conv: conv(index, ndf * mult, 1, 1, true),
            norm: None,
            activation: false,
        });
        PatchGan { config, layers }
    }

    /// images [B, C, H, W] -> logits [B, 1, H / 2^layers - 2, W / 2^layers - 2]. In training
    /// mode the batch norms use the batch's statistics and update their running ones.
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        let mut h = images.shallow_clone();
        for layer in &self.layers {
            h = layer.conv.forward(&h);
            if let Some(norm) = &layer.norm {
                h = norm.forward(&h, train);
            }
            if layer.activation {
                // LeakyReLU(0.2) as one kernel: PReLU with a fixed slope (same values, and
                // PyTorch's gradient at 0, the slope).
                h = h.prelu(&Tensor::full([1], SLOPE, (h.kind(), h.device())));
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn names_and_shapes_follow_the_reference() {
        let vs = nn::VarStore::new(Device::Cpu);
        let d = PatchGan::new(&vs.root(), PatchGanConfig::default());
        let vars = vs.variables();
        assert_eq!(vars["main.0.weight"].size(), [64, 3, 4, 4]);
        assert!(vars.contains_key("main.0.bias"));
        assert!(!vars.contains_key("main.2.bias"));
        assert_eq!(vars["main.8.weight"].size(), [512, 256, 4, 4]);
        assert_eq!(vars["main.9.num_batches_tracked"].kind(), Kind::Int64);
        assert_eq!(vars["main.11.weight"].size(), [1, 512, 4, 4]);
        let logits = d.forward(
            &Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu)),
            true,
        );
        assert_eq!(logits.size(), [2, 1, 6, 6]);
        assert_eq!(vars["main.3.num_batches_tracked"].int64_value(&[]), 1);
    }
}
