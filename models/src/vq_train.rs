//! Training a VQ tokenizer the way LlamaGen's `tokenizer/tokenizer_image/vq_train.py` does:
//! per step, one tokenizer update on [`VqLoss::generator`] (gradient clipping, then the
//! optimizer, then the EMA), then one discriminator update on [`VqLoss::discriminator`] against
//! the same reconstructions, each with its own optimizer and clipping.
//!
//! LlamaGen's code and its paper differ on the optimizer: the code builds `torch.optim.Adam`
//! without weight decay (its `--weight-decay 0.05` flag is read and never used), the paper says
//! AdamW with decay 0.05. `weight_decay` 0 is the code; 0.05 is the paper (decoupled, on every
//! parameter, as `torch.optim.AdamW(model.parameters())` applies it).
//!
//! A checkpoint is one safetensors file: `model.*` (the tokenizer under LlamaGen's names, so
//! that every command taking VQ weights takes the checkpoint), `discriminator.*`,
//! `optimizer.{m,v}.*`, `disc_optimizer.{m,v}.*`, `ema.*` when kept, `trainer.step`,
//! `trainer.images_seen` and `trainer.config` (JSON: [`VqTrainConfig`], [`VqConfig`] and the
//! sha256 of the LPIPS weights), with `NAME.sha256` beside it. Randomness (LPIPS dropout,
//! tokenizer dropout) is reseeded from the seed and the step, so a resumed run is the
//! uninterrupted one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn::VarStore};

use crate::ModelError;
use crate::checkpoint;
use crate::lpips::Lpips;
use crate::optim::{
    AdamW, AdamWSettings, clip_grad_norm, ema_copy, trainable, update_ema, zero_grads,
};
use crate::patchgan::PatchGan;
use crate::train::{MixedPrecision, Replicas};
use crate::vq::{VqConfig, VqModel};
use crate::vq_loss::{VqLoss, VqLossConfig};

/// Optimisation settings; defaults are LlamaGen's `vq_train.py` (its code, see the module
/// documentation for the paper's weight decay).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqTrainConfig {
    /// Constant learning rate of both optimizers.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay of both optimizers: 0 is LlamaGen's code (Adam), 0.05 its paper.
    pub weight_decay: f64,
    /// Gradient norm limit of each network; 0 disables clipping.
    pub grad_clip: f64,
    pub seed: i64,
    /// bf16 autocast of the forward passes on CUDA (LlamaGen's default); fp32 elsewhere.
    pub mixed_precision: MixedPrecision,
    /// EMA decay of the tokenizer's weights (LlamaGen's `--ema`: 0.9999); 0 keeps none.
    pub ema_decay: f64,
    pub loss: VqLossConfig,
}

impl Default for VqTrainConfig {
    fn default() -> Self {
        VqTrainConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            seed: 0,
            mixed_precision: MixedPrecision::None,
            ema_decay: 0.0,
            loss: VqLossConfig::default(),
        }
    }
}

impl VqTrainConfig {
    fn adamw(&self) -> AdamWSettings {
        AdamWSettings {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decay_vectors: true,
            // LlamaGen's vq_train.py builds its optimizers without `fused=True`.
            fused: false,
        }
    }
}

/// What one step measured (the tokenizer's terms as they enter its loss).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VqStepLosses {
    pub generator: f64,
    pub reconstruction: f64,
    pub perceptual: f64,
    pub adversarial: f64,
    pub codebook: f64,
    pub commit: f64,
    pub entropy: f64,
    pub discriminator: f64,
    pub logits_real: f64,
    pub logits_fake: f64,
    /// Distinct codes in the usage window over the codebook size.
    pub codebook_usage: f64,
}

fn set_requires_grad(params: &BTreeMap<String, Tensor>, on: bool) {
    for p in params.values() {
        let _ = p.set_requires_grad(on);
    }
}

/// A tokenizer, its discriminator, their optimizers and the run's position.
pub struct VqTrainer {
    pub vq: VqModel,
    pub vs: VarStore,
    pub loss: VqLoss,
    pub disc_vs: VarStore,
    _lpips_vs: VarStore,
    lpips_sha256: String,
    pub config: VqTrainConfig,
    /// Steps taken (each one tokenizer and one discriminator update).
    pub step: i64,
    pub images_seen: i64,
    params: BTreeMap<String, Tensor>,
    disc_params: BTreeMap<String, Tensor>,
    optimizer: AdamW,
    disc_optimizer: AdamW,
    ema: Option<BTreeMap<String, Tensor>>,
}

impl VqTrainer {
    /// A fresh run, initialised from `config.seed`, with the LPIPS weights at `lpips`
    /// (`scripts/export_lpips.py`).
    pub fn new(
        vq_config: VqConfig,
        config: VqTrainConfig,
        lpips: &Path,
        device: tch::Device,
    ) -> Result<Self, ModelError> {
        let lpips_sha256 = checkpoint::sha256_file(lpips)?;
        let (mut lpips_vs, lpips) = Lpips::load(lpips, device)?;
        tch::manual_seed(config.seed);
        let mut vs = VarStore::new(device);
        let vq = VqModel::new(&vs.root(), vq_config)?;
        let mut disc_vs = VarStore::new(device);
        let discriminator = PatchGan::new(&disc_vs.root(), config.loss.discriminator.clone());
        if config.mixed_precision == MixedPrecision::Fp64 {
            // Converted in place: the networks' handles on their variables see float64 too.
            for store in [&mut vs, &mut disc_vs, &mut lpips_vs] {
                store.double();
            }
        }
        let params = trainable(&vs);
        let disc_params = trainable(&disc_vs);
        let ema = (config.ema_decay > 0.0).then(|| ema_copy(&params));
        Ok(VqTrainer {
            vq,
            loss: VqLoss::new(config.loss.clone(), lpips, discriminator),
            optimizer: AdamW::new(&params),
            disc_optimizer: AdamW::new(&disc_params),
            vs,
            disc_vs,
            _lpips_vs: lpips_vs,
            lpips_sha256,
            config,
            step: 0,
            images_seen: 0,
            params,
            disc_params,
            ema,
        })
    }

    /// Starts from released or earlier tokenizer weights (`--init-from`, the paper's
    /// text-to-image fine-tune): the tokenizer's weights only; the discriminator, the
    /// optimizers and the step start fresh, and the EMA starts at the loaded weights.
    pub fn init_from(&mut self, weights: &Path) -> Result<(), ModelError> {
        crate::weights::load_strict(&self.vs, weights)?;
        if let Some(ema) = &mut self.ema {
            update_ema(ema, &self.params, 0.0);
        }
        Ok(())
    }

    /// One step on images [B, 3, H, W] in [-1, 1] (already augmented).
    pub fn train_step(&mut self, images: &Tensor) -> Result<VqStepLosses, ModelError> {
        self.step_with(images, None)
    }

    /// One data-parallel step on this rank's share of the global batch: the tokenizer's and
    /// the discriminator's gradients are each averaged over the ranks before clipping, as
    /// LlamaGen's `vq_train.py` does under DDP. Everything computed from a batch's statistics
    /// stays this rank's, as under DDP: the entropy term, the adaptive weight of the
    /// adversarial term (from this rank's gradients at the last layer), the discriminator's
    /// BatchNorm. The losses returned are this rank's.
    pub fn train_step_replicated(
        &mut self,
        images: &Tensor,
        replicas: &dyn Replicas,
    ) -> Result<VqStepLosses, ModelError> {
        self.step_with(images, Some(replicas))
    }

    fn step_with(
        &mut self,
        images: &Tensor,
        replicas: Option<&dyn Replicas>,
    ) -> Result<VqStepLosses, ModelError> {
        let (rank, world) = replicas.map_or((0, 1), |r| (r.rank() as i64, r.world() as i64));
        let average = |params: &BTreeMap<String, Tensor>| -> Result<(), ModelError> {
            match replicas {
                Some(r) => {
                    // Which parameters have a gradient follows from the step's structure
                    // alone, so every rank passes the same list.
                    let grads: Vec<Tensor> = params
                        .values()
                        .map(Tensor::grad)
                        .filter(Tensor::defined)
                        .collect();
                    r.mean(&grads).map_err(ModelError::Replicas)
                }
                None => Ok(()),
            }
        };
        // A stream per rank (rank 0's is the single process's) for the network's dropout.
        tch::manual_seed(
            self.config
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(self.step)
                .wrapping_add(rank.wrapping_mul(0x9E37_79B9)),
        );
        let global_step = self.step + 1;
        let bf16 =
            self.config.mixed_precision == MixedPrecision::Bf16 && self.vs.device().is_cuda();
        let double;
        let images = if self.config.mixed_precision == MixedPrecision::Fp64 {
            double = images.to_kind(tch::Kind::Double);
            &double
        } else {
            images
        };

        zero_grads(&mut self.params);
        // The generator's loss runs through the discriminator, whose weight gradients that step
        // has no use for (LlamaGen computes them and zeroes them before the discriminator's
        // step): frozen for the pass, they cost no backward work.
        set_requires_grad(&self.disc_params, false);
        let generator_pass = crate::autocast::bf16(bf16, || {
            let (recon, quantized) = self.vq.reconstruct(images, true)?;
            let g = self.loss.generator(
                images,
                &recon,
                &quantized,
                global_step,
                Some(self.vq.last_layer()),
                true,
            )?;
            Ok::<_, ModelError>((recon, quantized, g))
        });
        set_requires_grad(&self.disc_params, true);
        let (recon, quantized, g) = generator_pass?;
        let generator = g.total.double_value(&[]);
        if !generator.is_finite() {
            return Err(ModelError::Input(format!(
                "the tokenizer's loss is {generator} at step {global_step}"
            )));
        }
        g.total.backward();
        average(&self.params)?;
        if self.config.grad_clip > 0.0 {
            clip_grad_norm(&self.params, self.config.grad_clip);
        }
        let settings = self.config.adamw();
        self.optimizer
            .update(&self.params, &settings, self.config.lr, global_step)?;
        if let Some(ema) = &mut self.ema {
            update_ema(ema, &self.params, self.config.ema_decay);
        }

        zero_grads(&mut self.disc_params);
        let d = crate::autocast::bf16(bf16, || {
            self.loss
                .discriminator(images, &recon.detach(), global_step, true)
        });
        let discriminator = d.total.double_value(&[]);
        if !discriminator.is_finite() {
            return Err(ModelError::Input(format!(
                "the discriminator's loss is {discriminator} at step {global_step}"
            )));
        }
        d.total.backward();
        average(&self.disc_params)?;
        if self.config.grad_clip > 0.0 {
            clip_grad_norm(&self.disc_params, self.config.grad_clip);
        }
        self.disc_optimizer
            .update(&self.disc_params, &settings, self.config.lr, global_step)?;

        self.step = global_step;
        self.images_seen += images.size()[0] * world;
        let value = |t: &Tensor| t.double_value(&[]);
        Ok(VqStepLosses {
            generator,
            reconstruction: value(&g.reconstruction),
            perceptual: value(&g.perceptual),
            adversarial: value(&g.adversarial),
            codebook: value(&g.codebook),
            commit: value(&g.commit),
            entropy: value(&g.entropy),
            discriminator,
            logits_real: d.logits_real,
            logits_fake: d.logits_fake,
            codebook_usage: quantized.codebook_usage.unwrap_or(f64::NAN),
        })
    }

    /// The EMA weights under LlamaGen's names, if kept.
    pub fn ema(&self) -> Option<&BTreeMap<String, Tensor>> {
        self.ema.as_ref()
    }

    /// Writes the checkpoint atomically with its `.sha256`; returns the sha256.
    pub fn save(&self, path: &Path) -> Result<String, ModelError> {
        let model = self.vs.variables();
        let disc = self.disc_vs.variables();
        let mut tensors: Vec<(String, Tensor)> = checkpoint::entries("model.", &model)
            .chain(checkpoint::entries("discriminator.", &disc))
            .chain(self.optimizer.entries("optimizer"))
            .chain(self.disc_optimizer.entries("disc_optimizer"))
            .chain(checkpoint::entries("ema.", self.ema.iter().flatten()))
            .collect();
        tensors.push(("trainer.step".into(), Tensor::from_slice(&[self.step])));
        tensors.push((
            "trainer.images_seen".into(),
            Tensor::from_slice(&[self.images_seen]),
        ));
        let config = serde_json::json!({
            "train": self.config, "vq": self.vq.config, "lpips_sha256": self.lpips_sha256,
        });
        tensors.push((
            "trainer.config".into(),
            Tensor::from_slice(config.to_string().as_bytes()),
        ));
        checkpoint::write(path, tensors)
    }

    /// Resumes from a checkpoint of [`VqTrainer::save`] (its sha256 checked), with the same
    /// LPIPS weights it trained with.
    pub fn resume(path: &Path, lpips: &Path, device: tch::Device) -> Result<Self, ModelError> {
        let mut tensors = checkpoint::read_verified(path)?;
        let bytes = Vec::<u8>::try_from(&checkpoint::take(&mut tensors, path, "trainer.config")?)?;
        let config: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ModelError::Config(format!("checkpoint config: {e}")))?;
        if config.get("vq").is_none() {
            return Err(ModelError::Weights {
                path: path.to_owned(),
                problem: "not a tokenizer training checkpoint (no VQ config)".into(),
            });
        }
        let train: VqTrainConfig = serde_json::from_value(config["train"].clone())
            .map_err(|e| ModelError::Config(format!("checkpoint train config: {e}")))?;
        let vq: VqConfig = serde_json::from_value(config["vq"].clone())
            .map_err(|e| ModelError::Config(format!("checkpoint VQ config: {e}")))?;
        let mut trainer = VqTrainer::new(vq, train, lpips, device)?;
        if config["lpips_sha256"].as_str() != Some(trainer.lpips_sha256.as_str()) {
            return Err(ModelError::Weights {
                path: lpips.to_owned(),
                problem: format!(
                    "these LPIPS weights (sha256 {}) are not the ones {} trained with ({})",
                    trainer.lpips_sha256,
                    path.display(),
                    config["lpips_sha256"]
                ),
            });
        }
        trainer.step = checkpoint::take(&mut tensors, path, "trainer.step")?.int64_value(&[0]);
        trainer.images_seen =
            checkpoint::take(&mut tensors, path, "trainer.images_seen")?.int64_value(&[0]);
        let mut model = trainer.vs.variables();
        checkpoint::restore(&mut tensors, path, "model.", model.iter_mut())?;
        let mut disc = trainer.disc_vs.variables();
        checkpoint::restore(&mut tensors, path, "discriminator.", disc.iter_mut())?;
        trainer.optimizer.restore(&mut tensors, path, "optimizer")?;
        trainer
            .disc_optimizer
            .restore(&mut tensors, path, "disc_optimizer")?;
        if let Some(ema) = &mut trainer.ema {
            checkpoint::restore(&mut tensors, path, "ema.", ema.iter_mut())?;
        }
        checkpoint::nothing_left(&tensors, path)?;
        Ok(trainer)
    }
}
