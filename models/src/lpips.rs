//! LPIPS (Zhang et al. 2018), the perceptual loss of LlamaGen's tokenizer training
//! (`tokenizer/tokenizer_image/lpips.py`): VGG16's convolutional features at five depths,
//! each unit-normalised over channels, squared differences weighted per channel by LPIPS'
//! learned linear heads, averaged over space and summed over depths.
//!
//! Tensor names are the reference module's state dict, so `scripts/export_lpips.py` writes
//! torchvision's VGG16 weights and LPIPS' heads (`vgg.pth`) under the names this reads:
//!
//! ```text
//! scaling_layer.{shift,scale} [1, 3, 1, 1]
//! net.slice1.{0,2}, net.slice2.{5,7}, net.slice3.{10,12,14}, net.slice4.{17,19,21},
//! net.slice5.{24,26,28}                 .weight [C_out, C_in, 3, 3], .bias [C_out]
//! lin{0..4}.model.1.weight              [1, C, 1, 1]   (C = 64, 128, 256, 512, 512)
//! ```
//!
//! The heads sit behind a dropout of 0.5, as in the reference. LlamaGen's trainer puts the whole
//! loss module in training mode, so that dropout is active while it trains; `forward` takes
//! the mode so that both behaviours are available.

use tch::{Tensor, nn, nn::Module};

/// Channels of the five feature maps LPIPS compares.
pub const CHANNELS: [i64; 5] = [64, 128, 256, 512, 512];

/// VGG16's `features`, slice by slice: the layer index of each 3x3 convolution (each followed
/// by a ReLU); every slice after the first starts with a 2x2 max pool at the index before its
/// first convolution. A slice's convolutions all output its width; the first takes the
/// previous slice's.
const SLICES: [&[usize]; 5] = [
    &[0, 2],
    &[5, 7],
    &[10, 12, 14],
    &[17, 19, 21],
    &[24, 26, 28],
];

/// LPIPS' input scaling: images in [-1, 1] to the statistics its VGG was trained on.
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

/// The heads' dropout probability (`nn.Dropout()`'s default).
const HEAD_DROPOUT: f64 = 0.5;

/// VGG16 features with LPIPS' linear heads. Build it on a frozen `VarStore`: the loss trains
/// nothing of its own, its gradients flow to the images only.
pub struct Lpips {
    slices: Vec<Vec<nn::Conv2D>>,
    heads: Vec<Tensor>,
    shift: Tensor,
    scale: Tensor,
}

impl Lpips {
    /// VGG16's widths with random weights under the reference's names; load real ones with
    /// [`crate::weights::load_strict`].
    pub fn new(p: &nn::Path) -> Self {
        Lpips::with_widths(p, CHANNELS)
    }

    /// The same network with other slice widths (tiny ones for tests).
    pub fn with_widths(p: &nn::Path, widths: [i64; 5]) -> Self {
        let net = p / "net";
        let mut c_in = 3;
        let slices = SLICES
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(s, (indices, width))| {
                let sp = &net / format!("slice{}", s + 1);
                indices
                    .iter()
                    .map(|&index| {
                        let config = nn::ConvConfig {
                            padding: 1,
                            ..Default::default()
                        };
                        let conv = nn::conv2d(&sp / index, c_in, width, 3, config);
                        c_in = width;
                        conv
                    })
                    .collect()
            })
            .collect();
        let heads = widths
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                (p / format!("lin{i}") / "model" / "1").var(
                    "weight",
                    &[1, c, 1, 1],
                    nn::Init::Const(1.0 / c as f64),
                )
            })
            .collect();
        let constant = |name: &str, values: &[f32; 3]| {
            let t = (p / "scaling_layer").zeros_no_train(name, &[1, 3, 1, 1]);
            tch::no_grad(|| {
                t.shallow_clone()
                    .copy_(&Tensor::from_slice(values).view([1, 3, 1, 1]))
            });
            t
        };
        Lpips {
            slices,
            heads,
            shift: constant("shift", &SHIFT),
            scale: constant("scale", &SCALE),
        }
    }

    /// LPIPS weights as `scripts/export_lpips.py` writes them (widths read from the file),
    /// frozen, on `device`.
    pub fn load(
        path: &std::path::Path,
        device: tch::Device,
    ) -> Result<(nn::VarStore, Self), crate::ModelError> {
        let file = crate::weights::read(path)?;
        let mut widths = [0i64; 5];
        for (i, w) in widths.iter_mut().enumerate() {
            let name = format!("lin{i}.model.1.weight");
            *w =
                file.get(&name)
                    .map(|t| t.size()[1])
                    .ok_or_else(|| crate::ModelError::Weights {
                        path: path.to_owned(),
                        problem: format!("not LPIPS weights: {name} is missing"),
                    })?;
        }
        let mut vs = nn::VarStore::new(device);
        let lpips = Lpips::with_widths(&vs.root(), widths);
        crate::weights::load_strict(&vs, path)?;
        vs.freeze();
        Ok((vs, lpips))
    }

    /// The five ReLU outputs (relu1_2 ... relu5_3) of images [N, 3, H, W] in [-1, 1].
    fn features(&self, images: &Tensor) -> Vec<Tensor> {
        let mut h = (images - &self.shift) / &self.scale;
        let mut out = Vec::with_capacity(self.slices.len());
        for (s, convs) in self.slices.iter().enumerate() {
            if s > 0 {
                h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
            for conv in convs {
                h = conv.forward(&h).relu();
            }
            out.push(h.shallow_clone());
        }
        out
    }

    /// Perceptual distance of a and b, both [B, 3, H, W] in [-1, 1] -> [B, 1, 1, 1].
    /// `train` switches on the heads' dropout, as LlamaGen's training does.
    pub fn forward(&self, a: &Tensor, b: &Tensor, train: bool) -> Tensor {
        // Two passes, as the reference makes them: in training only the reconstructions need
        // a backward pass, and autograd skips the real images' branch entirely (one batched
        // pass would back-propagate through both halves).
        let (features_a, features_b) = (self.features(a), self.features(b));
        let mut total: Option<Tensor> = None;
        for ((fa, fb), head) in features_a.iter().zip(&features_b).zip(&self.heads) {
            let fa = unit_normalize(fa);
            let fb = unit_normalize(fb);
            let diff = (fa - fb).square().dropout(HEAD_DROPOUT, train);
            let layer = diff
                .conv2d(head, None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1)
                .mean_dim([2, 3].as_slice(), true, crate::accumulation(&diff));
            total = Some(match total {
                Some(t) => t + layer,
                None => layer,
            });
        }
        total.expect("LPIPS has five feature maps")
    }
}

/// The reference's `normalize_tensor`: x / (||x|| over channels + 1e-10).
fn unit_normalize(x: &Tensor) -> Tensor {
    let norm = x
        .square()
        .sum_dim_intlist(1, true, crate::accumulation(x))
        .sqrt();
    x / (norm + 1e-10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn distance_is_zero_for_equal_images_and_grows_with_difference() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let lpips = Lpips::new(&vs.root());
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(
            names.contains(&"net.slice5.28.weight".to_owned()),
            "{names:?}"
        );
        assert!(names.contains(&"lin4.model.1.weight".to_owned()));
        let a = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let same = lpips.forward(&a, &a, false);
        assert_eq!(same.size(), [2, 1, 1, 1]);
        assert!(same.abs().max().double_value(&[]) < 1e-6);
        let noise = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let near = lpips.forward(&a, &(&a + &noise * 0.05), false);
        let far = lpips.forward(&a, &(&a + &noise * 0.5), false);
        assert!(
            far.sum(Kind::Float).double_value(&[]) > near.sum(Kind::Float).double_value(&[]),
            "a larger perturbation must be farther"
        );
    }
}
