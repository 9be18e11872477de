//! Training a GPT the way LlamaGen's `train_c2i.py` / `train_t2i.py` do: AdamW (weight decay on
//! tensors of two or more dimensions only), gradient clipping, the paper's dropouts and
//! condition dropout, gradient accumulation, and checkpoints that resume exactly.
//!
//! The optimizer keeps its moments here ([`crate::optim`]; the update runs in libtorch's fused
//! kernel or written out) because tch does not expose its optimizers' moment buffers, and a
//! checkpoint without them does not resume the same run. Randomness (dropout, condition dropout) is reseeded from the run's seed
//! and the step number at every step, so a resumed run draws what the uninterrupted one would.
//!
//! A checkpoint is one safetensors file: `model.*` (the GPT, LlamaGen's names), `optimizer.m.*`
//! and `optimizer.v.*` (moments), `ema.*` (the moving average, when kept), `trainer.step`, `trainer.tokens_seen`, and `trainer.config`
//! (the JSON of [`TrainConfig`] and [`GptConfig`] as bytes); next to it `NAME.sha256`, checked
//! before a resume so that a corrupted or truncated file is refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn::VarStore};

use crate::ModelError;
use crate::checkpoint;
use crate::gpt::{Gpt, GptConfig};
use crate::optim::{
    AdamW, AdamWSettings, clip_grad_norm, ema_copy, grad_norm, joint_norm, scale_grads,
    squared_norm, trainable, update_ema, zero_grads,
};

/// Optimisation settings; defaults are the paper's (lr 1e-4 per 256 samples of batch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Learning rate after warm-up (already scaled to the global batch).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Total gradient norm limit; 0 disables clipping.
    pub grad_clip: f64,
    /// Linear warm-up from 0 over this many steps (LlamaGen uses none).
    pub warmup_steps: i64,
    pub seed: i64,
    /// bf16 autocast of the forward pass on CUDA (LlamaGen's `--mixed-precision bf16`, its
    /// default); weights, gradients and optimizer state stay fp32. The CPU computes in fp32.
    #[serde(default)]
    pub mixed_precision: MixedPrecision,
    /// Cosine decay to 0 over this many steps after warm-up; 0 keeps the rate constant
    /// (LlamaGen's schedule).
    #[serde(default)]
    pub cosine_steps: i64,
    /// Decay of an exponential moving average of the weights kept beside them (LlamaGen's
    /// `--ema` uses 0.9999); 0 keeps none.
    #[serde(default)]
    pub ema_decay: f64,
    /// Keep only each block's input through the forward pass and run the blocks again in the
    /// backward pass ([`Gpt::backward_checkpointed`]): activations of one block instead of all,
    /// for about a third more compute. The gradients are the same; the dropout masks are drawn
    /// per block from the step's seed instead of in one stream.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`, as LlamaGen's
    /// `train_c2i.py` asks for) rather than the update written out operation by operation: the
    /// same arithmetic up to float rounding, one pass over each tensor. A checkpoint records it
    /// so that a resumed run takes the same steps; checkpoints from before the setting existed
    /// were written by the plain update and resume with it.
    #[serde(default)]
    pub fused_adamw: bool,
}

/// Forward-pass precision on CUDA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    /// fp32 throughout.
    #[default]
    None,
    /// bf16 autocast (see [`crate::autocast`]).
    Bf16,
    /// Weights, optimizer state and arithmetic in float64 on any device: for checking that two
    /// ways of training compute the same thing (data parallelism against one process, say)
    /// without float32's rounding, which Adam amplifies where a gradient nearly cancels.
    Fp64,
}

impl std::str::FromStr for MixedPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "fp32" => Ok(MixedPrecision::None),
            "bf16" => Ok(MixedPrecision::Bf16),
            "fp64" => Ok(MixedPrecision::Fp64),
            other => Err(format!("precision is bf16, fp32 or fp64, got {other:?}")),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.05,
            grad_clip: 1.0,
            warmup_steps: 0,
            seed: 0,
            mixed_precision: MixedPrecision::None,
            ema_decay: 0.0,
            cosine_steps: 0,
            activation_checkpointing: false,
            fused_adamw: true,
        }
    }
}

impl TrainConfig {
    fn adamw(&self) -> AdamWSettings {
        AdamWSettings {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decay_vectors: false,
            fused: self.fused_adamw,
        }
    }

    /// The learning rate of optimizer step `step` (from 0).
    pub fn lr_at(&self, step: i64) -> f64 {
        if self.warmup_steps > 0 && step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if self.cosine_steps > 0 {
            let t = ((step - self.warmup_steps) as f64 / self.cosine_steps as f64).clamp(0.0, 1.0);
            return self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        }
        self.lr
    }
}

/// One micro-batch. For text conditioning, `caption_lengths` [B] i64 gives each caption's
/// valid tokens, which sit at the end of the [B, T, C] prefix (LlamaGen's left padding), and
/// `valid` [B] weights the samples (LlamaGen's t2i `valid` flags; 0 drops a sample).
pub struct MicroBatch {
    /// [B] class ids or [B, T, C] caption features.
    pub cond: Tensor,
    /// [B, N] image tokens.
    pub codes: Tensor,
    pub caption_lengths: Option<Tensor>,
    pub valid: Option<Tensor>,
}

impl From<&(Tensor, Tensor)> for MicroBatch {
    fn from((cond, codes): &(Tensor, Tensor)) -> Self {
        MicroBatch {
            cond: cond.shallow_clone(),
            codes: codes.shallow_clone(),
            caption_lengths: None,
            valid: None,
        }
    }
}

/// LlamaGen's t2i attention mask (`dataset/t2i.py`): causal over prefix + image tokens, the
/// padded caption positions hidden from every query, and each position seeing itself (so a
/// padded row is never empty). lengths: [B] valid caption tokens at the end of a `prefix`-long
/// prefix; returns [B, 1, L, L] bool with L = prefix + n - 1 (the model reads codes[:, :n-1]).
pub fn caption_mask(lengths: &Tensor, prefix: i64, n: i64) -> Tensor {
    let total = prefix + n;
    let device = lengths.device();
    let b = lengths.size()[0];
    let positions = Tensor::arange(prefix, (Kind::Int64, device));
    // [B, T]: true where the caption token is valid (the last `length` of the prefix).
    let valid = positions
        .unsqueeze(0)
        .ge_tensor(&(lengths.unsqueeze(1) * -1 + prefix));
    let columns = Tensor::cat(&[valid, Tensor::ones([b, n], (Kind::Bool, device))], 1);
    let causal = Tensor::ones([total, total], (Kind::Bool, device)).tril(0);
    let eye = Tensor::eye(total, (Kind::Bool, device));
    let mask = causal
        .unsqueeze(0)
        .logical_and(&columns.unsqueeze(1))
        .logical_or(&eye);
    mask.narrow(1, 0, total - 1)
        .narrow(2, 0, total - 1)
        .unsqueeze(1)
}

/// The ranks of a data-parallel run as the trainer needs them (the pipeline implements it over
/// `llamagen_distributed::ProcessGroup`).
pub trait Replicas {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Gives `params` gradients that [`Replicas::mean`] and [`Replicas::mean_to_owners`] can
    /// reduce where they are, with no copy (flat buckets the gradients are views of), laid out
    /// for `owners` (one rank per parameter) when the optimizer is sharded. Called before each
    /// backward pass; a call that finds the gradients already attached does nothing.
    /// `ready_order` (a permutation of the indices of `params`) is the order the backward pass
    /// is expected to finish the gradients in ([`crate::gpt::gradient_ready_order`]).
    fn attach_gradients(
        &self,
        params: &[Tensor],
        owners: Option<&[usize]>,
        ready_order: &[usize],
    ) -> Result<(), String>;
    /// Lets the next backward pass start reducing the attached gradients as they are
    /// accumulated, under the rest of the pass (the last micro-batch's: the ones before it
    /// accumulate without communicating). [`Replicas::mean`] or [`Replicas::mean_to_owners`]
    /// then waits for what it started.
    fn reduce_during_next_backward(&self);
    /// Replaces each tensor with its mean over the ranks; every rank passes the same shapes.
    fn mean(&self, tensors: &[Tensor]) -> Result<(), String>;
    /// Copies rank `root`'s tensors into every rank's; every rank passes the same shapes.
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), String>;
    /// Replaces tensor i with its mean over the ranks on rank `owners[i]` only (the
    /// reduce-scatter of a sharded optimizer); what the other ranks hold in it afterwards is
    /// unspecified.
    fn mean_to_owners(&self, tensors: &[Tensor], owners: &[usize]) -> Result<(), String>;
    /// Sums `values` over the ranks; every rank gets the sums.
    fn sum(&self, values: &[f64]) -> Result<Vec<f64>, String>;
}

/// Moments gathered for a checkpoint are sent in pieces of about this many bytes, so that a
/// rank other than the writer never holds more than one piece of another rank's state.
const GATHER_BYTES: usize = 64 << 20;

/// The rank that updates each parameter when the optimizer state is sharded over `world`
/// ranks: the largest parameters first, each to the rank with the fewest elements so far (the
/// lowest rank on a tie), as PyTorch's `ZeroRedundancyOptimizer` balances them.
pub fn optimizer_owners(
    params: &BTreeMap<String, Tensor>,
    world: usize,
) -> BTreeMap<String, usize> {
    let mut by_size: Vec<(&String, i64)> =
        params.iter().map(|(n, t)| (n, t.numel() as i64)).collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut load = vec![0i64; world.max(1)];
    let mut owners = BTreeMap::new();
    for (name, size) in by_size {
        let (rank, _) = load
            .iter()
            .enumerate()
            .min_by_key(|&(r, &l)| (l, r))
            .unwrap_or((0, &0));
        load[rank] += size;
        owners.insert(name.clone(), rank);
    }
    owners
}

/// A GPT, its optimizer and its position in the run.
pub struct Trainer {
    pub gpt: Gpt,
    pub vs: VarStore,
    pub config: TrainConfig,
    /// Optimizer steps taken.
    pub step: i64,
    /// Image tokens the model has been trained to predict.
    pub tokens_seen: i64,
    /// The gradient's L2 norm at the last step, before clipping (over all ranks' samples in a
    /// data-parallel run).
    pub last_grad_norm: f64,
    params: BTreeMap<String, Tensor>,
    optimizer: AdamW,
    /// Exponential moving average of the parameters (LlamaGen's `--ema`), if kept.
    ema: Option<BTreeMap<String, Tensor>>,
    /// The rank that updates each parameter, when the optimizer state is sharded
    /// ([`Trainer::shard_optimizer`]).
    owners: Option<BTreeMap<String, usize>>,
}

impl Trainer {
    /// A fresh run: the GPT initialised from `config.seed`.
    pub fn new(
        gpt_config: GptConfig,
        config: TrainConfig,
        device: tch::Device,
    ) -> Result<Self, ModelError> {
        tch::manual_seed(config.seed);
        let mut vs = VarStore::new(device);
        let gpt = Gpt::new(&vs.root(), gpt_config)?;
        if config.mixed_precision == MixedPrecision::Fp64 {
            // Converted in place: the GPT's handles on its variables see float64 too.
            vs.double();
        }
        let params = trainable(&vs);
        let optimizer = AdamW::new(&params);
        let ema = (config.ema_decay > 0.0).then(|| ema_copy(&params));
        Ok(Trainer {
            gpt,
            vs,
            config,
            step: 0,
            tokens_seen: 0,
            last_grad_norm: f64::NAN,
            params,
            optimizer,
            ema,
            owners: None,
        })
    }

    /// ZeRO stage 1: from now on this rank (`rank` of `world`) keeps AdamW's moments for the
    /// parameters [`optimizer_owners`] gives it only, and updates those alone; after each
    /// update every rank sends the parameters it owns to the others. The update is the same
    /// arithmetic as unsharded, so the weights are too. Steps then need the replicas
    /// ([`Trainer::train_step_replicated`]), and a checkpoint needs
    /// [`Trainer::gather_optimizer`] first.
    pub fn shard_optimizer(&mut self, rank: usize, world: usize) {
        let owners = optimizer_owners(&self.params, world);
        let owned = owners
            .iter()
            .filter(|&(_, &r)| r == rank)
            .map(|(n, _)| n.clone())
            .collect();
        self.optimizer.shard(owned);
        self.owners = Some(owners);
    }

    /// Bytes of optimizer state (AdamW's two moments) this trainer holds.
    pub fn optimizer_bytes(&self) -> usize {
        self.optimizer.bytes()
    }

    /// Brings every rank's moments to rank 0, so that it can [`Trainer::save`] a checkpoint
    /// that resumes on any number of ranks. Every rank calls it; the others hold one piece of
    /// another rank's state at a time. [`Trainer::release_optimizer`] drops them again.
    pub fn gather_optimizer(&mut self, replicas: &dyn Replicas) -> Result<(), ModelError> {
        let Some(owners) = &self.owners else {
            return Ok(());
        };
        let rank = replicas.rank();
        for owner in (0..replicas.world()).filter(|&o| o != 0) {
            let names: Vec<&String> = owners
                .iter()
                .filter(|&(_, &o)| o == owner)
                .map(|(n, _)| n)
                .collect();
            let mut piece: Vec<&String> = Vec::new();
            let mut bytes = 0;
            for (i, name) in names.iter().enumerate() {
                let p = &self.params[*name];
                bytes += 2 * p.numel() * p.kind().elt_size_in_bytes();
                piece.push(name);
                if bytes < GATHER_BYTES && i + 1 < names.len() {
                    continue;
                }
                let moments: Vec<Tensor> = piece
                    .iter()
                    .flat_map(|name| {
                        [&self.optimizer.m, &self.optimizer.v].map(|state| match state.get(*name) {
                            Some(t) if rank == owner => t.shallow_clone(),
                            _ => self.params[*name].zeros_like(),
                        })
                    })
                    .collect();
                replicas
                    .broadcast(&moments, owner)
                    .map_err(ModelError::Replicas)?;
                if rank == 0 {
                    let mut moments = moments.into_iter();
                    for name in &piece {
                        if let (Some(m), Some(v)) = (moments.next(), moments.next()) {
                            self.optimizer.m.insert((*name).clone(), m);
                            self.optimizer.v.insert((*name).clone(), v);
                        }
                    }
                }
                piece.clear();
                bytes = 0;
            }
        }
        Ok(())
    }

    /// Drops the moments [`Trainer::gather_optimizer`] brought from other ranks.
    pub fn release_optimizer(&mut self) {
        if let Some(owned) = self.optimizer.owned.clone() {
            self.optimizer.shard(owned);
        }
    }

    /// Starts from earlier weights (`--init-from`): a checkpoint of this trainer or converted
    /// LlamaGen weights, checked strictly by name and shape. The optimizer, the step and the
    /// EMA start afresh (the EMA at the loaded weights). The GPT's 2D RoPE table is computed,
    /// not stored, so weights trained at one image size load at another, as the paper's 512 px
    /// text-to-image stage starts from its 256 px model.
    pub fn init_from(&mut self, weights: &Path) -> Result<(), ModelError> {
        crate::weights::load_strict(&self.vs, weights)?;
        if let Some(ema) = &mut self.ema {
            update_ema(ema, &self.params, 0.0);
        }
        Ok(())
    }

    /// One optimizer step over `micro_batches` of (cond [B] or [B, T, C], codes [B, N]), whose
    /// gradients are averaged (gradient accumulation). Returns the mean loss.
    pub fn train_step(&mut self, micro_batches: &[(Tensor, Tensor)]) -> Result<f64, ModelError> {
        let batches: Vec<MicroBatch> = micro_batches.iter().map(MicroBatch::from).collect();
        self.train_step_on(&batches)
    }

    /// [`Trainer::train_step`] for micro-batches that may carry caption masks and weights.
    pub fn train_step_on(&mut self, micro_batches: &[MicroBatch]) -> Result<f64, ModelError> {
        self.step_with(micro_batches, None)
    }

    /// One data-parallel step: this rank's share of each micro-batch (rank r of W holding
    /// samples r*B .. (r+1)*B of a global micro-batch of W*B), gradients averaged over the
    /// ranks before clipping, so that every rank makes the same update as one process would on
    /// the global micro-batches. Returns this rank's mean loss.
    pub fn train_step_replicated(
        &mut self,
        micro_batches: &[MicroBatch],
        replicas: &dyn Replicas,
    ) -> Result<f64, ModelError> {
        self.step_with(micro_batches, Some(replicas))
    }

    fn step_with(
        &mut self,
        micro_batches: &[MicroBatch],
        replicas: Option<&dyn Replicas>,
    ) -> Result<f64, ModelError> {
        if micro_batches.is_empty() {
            return Err(ModelError::Input("no micro-batches".into()));
        }
        if self.owners.is_some() && replicas.is_none() {
            return Err(ModelError::Input(
                "a sharded optimizer steps with its replicas".into(),
            ));
        }
        let (rank, world) = replicas.map_or((0, 1), |r| (r.rank() as i64, r.world() as i64));
        let step_seed = self
            .config
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(self.step);
        tch::manual_seed(step_seed);
        // Condition dropout is drawn for the global micro-batch and each rank takes its slice, so
        // that the ranks drop exactly the samples one process would.
        let drops: Vec<Tensor> = micro_batches
            .iter()
            .map(|batch| {
                let b = batch.codes.size()[0];
                Tensor::rand([b * world], (Kind::Float, batch.cond.device()))
                    .narrow(0, rank * b, b)
                    .lt(self.gpt.config.class_dropout_prob)
            })
            .collect();
        // Dropout inside the network: a stream per rank (rank 0's is the single process's), as
        // PyTorch's DDP runs seed each rank apart.
        let network_seed = step_seed.wrapping_add(rank.wrapping_mul(0x9E37_79B9));
        tch::manual_seed(network_seed);
        zero_grads(&mut self.params);
        if let Some(replicas) = replicas {
            let params: Vec<Tensor> = self.params.values().map(Tensor::shallow_clone).collect();
            let owners: Option<Vec<usize>> = self
                .owners
                .as_ref()
                .map(|owners| self.params.keys().map(|n| owners[n]).collect());
            let names: Vec<&str> = self.params.keys().map(String::as_str).collect();
            replicas
                .attach_gradients(
                    &params,
                    owners.as_deref(),
                    &crate::gpt::gradient_ready_order(&names),
                )
                .map_err(ModelError::Replicas)?;
        }
        let mut total = 0.0;
        let share = 1.0 / micro_batches.len() as f64;
        let bf16 =
            self.config.mixed_precision == MixedPrecision::Bf16 && self.vs.device().is_cuda();
        let fp64 = self.config.mixed_precision == MixedPrecision::Fp64;
        for (m, (batch, drop)) in micro_batches.iter().zip(&drops).enumerate() {
            if m + 1 == micro_batches.len()
                && let Some(replicas) = replicas
            {
                replicas.reduce_during_next_backward();
            }
            let codes = &batch.codes;
            let cond = if fp64 && batch.cond.is_floating_point() {
                &batch.cond.to_kind(Kind::Double)
            } else {
                &batch.cond
            };
            let cond = self.gpt.drop_condition(cond, drop);
            let mask = batch.caption_lengths.as_ref().map(|lengths| {
                caption_mask(lengths, self.gpt.config.cls_token_num, codes.size()[1])
            });
            let value = if self.config.activation_checkpointing {
                crate::autocast::bf16(bf16, || {
                    self.gpt.backward_checkpointed(
                        &cond,
                        codes,
                        mask.as_ref(),
                        batch.valid.as_ref(),
                        share,
                        network_seed.wrapping_add((m as i64).wrapping_mul(0x2545_F491)),
                    )
                })?
            } else {
                let (_, loss) = crate::autocast::bf16(bf16, || {
                    self.gpt.forward_with_targets(
                        &cond,
                        codes,
                        mask.as_ref(),
                        batch.valid.as_ref(),
                        true,
                    )
                })?;
                let value = loss.double_value(&[]);
                if value.is_finite() {
                    (loss * share).backward();
                }
                value
            };
            if !value.is_finite() {
                return Err(ModelError::Input(format!(
                    "loss is {value} at step {}",
                    self.step
                )));
            }
            total += value * share;
            self.tokens_seen += codes.numel() as i64 * world;
        }
        self.last_grad_norm = match (replicas, &self.owners) {
            (Some(replicas), Some(owners)) => self.reduce_to_owners(replicas, owners)?,
            (Some(replicas), None) => {
                let grads: Vec<Tensor> = self.params.values().map(Tensor::grad).collect();
                replicas.mean(&grads).map_err(ModelError::Replicas)?;
                self.clip()
            }
            (None, _) => self.clip(),
        };
        self.step += 1;
        let lr = self.config.lr_at(self.step - 1);
        self.optimizer
            .update(&self.params, &self.config.adamw(), lr, self.step)?;
        if let (Some(owners), Some(replicas)) = (&self.owners, replicas) {
            // Each rank updated its own parameters; every rank takes the others' from them.
            let _no_grad = tch::no_grad_guard();
            for owner in 0..replicas.world() {
                let mine: Vec<Tensor> = owners
                    .iter()
                    .filter(|&(_, &o)| o == owner)
                    .map(|(n, _)| self.params[n].shallow_clone())
                    .collect();
                replicas
                    .broadcast(&mine, owner)
                    .map_err(ModelError::Replicas)?;
            }
        }
        if let Some(ema) = &mut self.ema {
            update_ema(ema, &self.params, self.config.ema_decay);
        }
        Ok(total)
    }

    /// Clips the gradients (when the run clips) and returns their norm before clipping.
    fn clip(&self) -> f64 {
        if self.config.grad_clip > 0.0 {
            clip_grad_norm(&self.params, self.config.grad_clip)
        } else {
            grad_norm(&self.params)
        }
    }

    /// The sharded optimizer's gradient step: each rank receives the mean gradients of the
    /// parameters it owns only, the joint norm is
    /// summed from each rank's squared norms of its own, and each rank clips its own. Returns
    /// the norm before clipping, the same on every rank and to the bit the one an unsharded
    /// run computes from the same gradients.
    fn reduce_to_owners(
        &self,
        replicas: &dyn Replicas,
        owners: &BTreeMap<String, usize>,
    ) -> Result<f64, ModelError> {
        let rank = replicas.rank();
        let grads: Vec<Tensor> = self.params.values().map(Tensor::grad).collect();
        let owner_of: Vec<usize> = self.params.keys().map(|n| owners[n]).collect();
        replicas
            .mean_to_owners(&grads, &owner_of)
            .map_err(ModelError::Replicas)?;
        // Only the owner measures a gradient (the others hold no mean of it); their exact zeros
        // make each sum the owner's value.
        let squares: Vec<f64> = self
            .params
            .values()
            .zip(&owner_of)
            .map(|(p, &owner)| if owner == rank { squared_norm(p) } else { 0.0 })
            .collect();
        let total = joint_norm(&replicas.sum(&squares).map_err(ModelError::Replicas)?);
        if self.config.grad_clip > 0.0 {
            let mine = self
                .params
                .iter()
                .filter(|&(n, _)| owners[n] == rank)
                .map(|(_, p)| p);
            scale_grads(mine, total, self.config.grad_clip);
        }
        Ok(total)
    }

    /// The EMA weights under LlamaGen's parameter names, if kept.
    pub fn ema(&self) -> Option<&BTreeMap<String, Tensor>> {
        self.ema.as_ref()
    }

    /// Writes the checkpoint atomically and its `.sha256` next to it; returns the sha256.
    pub fn save(&self, path: &Path) -> Result<String, ModelError> {
        if !self.optimizer.is_whole(&self.params) {
            return Err(ModelError::Input(
                "the optimizer state is sharded across ranks: gather it before saving".into(),
            ));
        }
        let model = self.vs.variables();
        let mut tensors: Vec<(String, Tensor)> = checkpoint::entries("model.", &model)
            .chain(self.optimizer.entries("optimizer"))
            .chain(checkpoint::entries("ema.", self.ema.iter().flatten()))
            .collect();
        tensors.push(("trainer.step".into(), Tensor::from_slice(&[self.step])));
        tensors.push((
            "trainer.tokens_seen".into(),
            Tensor::from_slice(&[self.tokens_seen]),
        ));
        let config = serde_json::json!({ "train": self.config, "gpt": self.gpt.config });
        tensors.push((
            "trainer.config".into(),
            Tensor::from_slice(config.to_string().as_bytes()),
        ));
        checkpoint::write(path, tensors)
    }

    /// Resumes from a checkpoint written by [`Trainer::save`], after checking its sha256
    /// against the `.sha256` file beside it.
    pub fn resume(path: &Path, device: tch::Device) -> Result<Self, ModelError> {
        let mut tensors = checkpoint::read_verified(path)?;
        let take = |tensors: &mut BTreeMap<String, Tensor>, name: &str| {
            checkpoint::take(tensors, path, name)
        };
        let config_bytes = Vec::<u8>::try_from(&take(&mut tensors, "trainer.config")?)?;
        let config: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| ModelError::Config(format!("checkpoint config: {e}")))?;
        let train: TrainConfig = serde_json::from_value(config["train"].clone())
            .map_err(|e| ModelError::Config(format!("checkpoint train config: {e}")))?;
        let gpt_config: GptConfig = serde_json::from_value(config["gpt"].clone())
            .map_err(|e| ModelError::Config(format!("checkpoint GPT config: {e}")))?;
        let mut trainer = Trainer::new(gpt_config, train, device)?;
        trainer.step = take(&mut tensors, "trainer.step")?.int64_value(&[0]);
        trainer.tokens_seen = take(&mut tensors, "trainer.tokens_seen")?.int64_value(&[0]);
        let mut model = trainer.vs.variables();
        checkpoint::restore(&mut tensors, path, "model.", model.iter_mut())?;
        trainer.optimizer.restore(&mut tensors, path, "optimizer")?;
        if let Some(ema) = &mut trainer.ema {
            checkpoint::restore(&mut tensors, path, "ema.", ema.iter_mut())?;
        }
        checkpoint::nothing_left(&tensors, path)?;
        Ok(trainer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_owners_balance_the_elements() {
        let params: BTreeMap<String, Tensor> = [("a", 10), ("b", 100), ("c", 50), ("d", 60)]
            .into_iter()
            .map(|(n, size)| {
                (
                    n.to_string(),
                    Tensor::zeros([size], (Kind::Float, tch::Device::Cpu)),
                )
            })
            .collect();
        let owners = optimizer_owners(&params, 2);
        // 100 to rank 0; 60 and 50 to rank 1 (then 110 against 100); 10 to rank 0.
        let expected: BTreeMap<String, usize> = [("a", 0), ("b", 0), ("c", 1), ("d", 1)]
            .into_iter()
            .map(|(n, r)| (n.to_string(), r))
            .collect();
        assert_eq!(owners, expected);
        assert!(optimizer_owners(&params, 1).values().all(|&r| r == 0));
        // More ranks than parameters: some own nothing.
        let owners = optimizer_owners(&params, 6);
        let mut ranks: Vec<usize> = owners.values().copied().collect();
        ranks.sort();
        assert_eq!(ranks, [0, 1, 2, 3]);
    }

    #[test]
    fn checkpoints_from_before_the_fused_kernel_resume_with_the_plain_update() {
        let mut old = serde_json::to_value(TrainConfig::default()).unwrap();
        old.as_object_mut().unwrap().remove("fused_adamw");
        let read: TrainConfig = serde_json::from_value(old).unwrap();
        assert!(!read.fused_adamw);
        assert!(TrainConfig::default().fused_adamw);
    }
}
