//! PyTorch's AdamW update and gradient clipping, written out because tch does not expose its
//! optimizers' moment buffers and a checkpoint without them does not resume the same run.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// AdamW's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay one-dimensional tensors (biases, norm scales) too, as `torch.optim.AdamW` over
    /// `model.parameters()` does; LlamaGen's GPT trainer decays only tensors of 2+ dimensions.
    pub decay_vectors: bool,
}

/// AdamW with PyTorch's update: decoupled decay, bias-corrected moments.
///
/// Sharded (ZeRO stage 1), it keeps the moments of the parameters it owns only and updates
/// those alone; the other ranks own and update the rest.
pub(crate) struct AdamW {
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
    /// The parameters this rank updates, when the state is sharded across ranks.
    pub owned: Option<std::collections::BTreeSet<String>>,
}

impl AdamW {
    pub fn new(params: &BTreeMap<String, Tensor>) -> Self {
        let zeros = |t: &Tensor| t.zeros_like();
        AdamW {
            m: params.iter().map(|(n, t)| (n.clone(), zeros(t))).collect(),
            v: params.iter().map(|(n, t)| (n.clone(), zeros(t))).collect(),
            owned: None,
        }
    }

    /// Keeps the moments of the `owned` parameters only, from now on updating those alone.
    pub fn shard(&mut self, owned: std::collections::BTreeSet<String>) {
        self.m.retain(|name, _| owned.contains(name));
        self.v.retain(|name, _| owned.contains(name));
        self.owned = Some(owned);
    }

    /// Whether the moments of every parameter in `params` are held here (a checkpoint needs
    /// them all).
    pub fn is_whole(&self, params: &BTreeMap<String, Tensor>) -> bool {
        params
            .keys()
            .all(|n| self.m.contains_key(n) && self.v.contains_key(n))
    }

    /// Bytes of moment state held here.
    pub fn bytes(&self) -> usize {
        self.m
            .values()
            .chain(self.v.values())
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }

    /// The moments as checkpoint entries, `{prefix}.m.NAME` and `{prefix}.v.NAME`.
    pub fn entries(&self, prefix: &str) -> Vec<(String, Tensor)> {
        crate::checkpoint::entries(&format!("{prefix}.m."), &self.m)
            .chain(crate::checkpoint::entries(&format!("{prefix}.v."), &self.v))
            .collect()
    }

    /// Copies the moments back from a checkpoint's `{prefix}.m.*` and `{prefix}.v.*`.
    pub fn restore(
        &mut self,
        tensors: &mut BTreeMap<String, Tensor>,
        path: &std::path::Path,
        prefix: &str,
    ) -> Result<(), crate::ModelError> {
        crate::checkpoint::restore(tensors, path, &format!("{prefix}.m."), self.m.iter_mut())?;
        crate::checkpoint::restore(tensors, path, &format!("{prefix}.v."), self.v.iter_mut())
    }

    /// `step` counts from 1. Parameters without a gradient are skipped.
    pub fn update(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        c: &AdamWSettings,
        lr: f64,
        step: i64,
    ) {
        tch::no_grad(|| {
            let bias1 = 1.0 - c.beta1.powi(step as i32);
            let bias2 = 1.0 - c.beta2.powi(step as i32);
            for (name, p) in params {
                let grad = p.grad();
                let mine = self.owned.as_ref().is_none_or(|owned| owned.contains(name));
                if !grad.defined() || !mine {
                    continue;
                }
                let mut p = p.shallow_clone();
                if c.weight_decay != 0.0 && (p.dim() >= 2 || c.decay_vectors) {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let m = self.m.get_mut(name).expect("moment for every parameter");
                let _ = m.lerp_(&grad, 1.0 - c.beta1);
                let v = self.v.get_mut(name).expect("moment for every parameter");
                let _ = v.g_mul_scalar_(c.beta2);
                let _ = v.addcmul_(&(&grad * (1.0 - c.beta2)), &grad);
                let denom = v.sqrt() / bias2.sqrt() + c.eps;
                let _ = p.addcdiv_(&(&*m * (-lr / bias1)), &denom);
            }
        });
    }
}

/// Scales all gradients so that their joint L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`, including its 1e-6 guard). Returns the norm before clipping.
pub(crate) fn clip_grad_norm(params: &BTreeMap<String, Tensor>, max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads = defined_grads(params);
        let total = norm(&grads);
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
        }
        total
    })
}

/// The joint L2 norm of all gradients, as [`clip_grad_norm`] measures it, without clipping.
pub(crate) fn grad_norm(params: &BTreeMap<String, Tensor>) -> f64 {
    tch::no_grad(|| norm(&defined_grads(params)))
}

fn defined_grads(params: &BTreeMap<String, Tensor>) -> Vec<Tensor> {
    params
        .values()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect()
}

fn norm(grads: &[Tensor]) -> f64 {
    grads
        .iter()
        .map(|g| g.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt()
}

/// The trainable variables of `vs` by name.
pub(crate) fn trainable(vs: &tch::nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect()
}

/// A detached copy of `params`: an EMA's starting point.
pub(crate) fn ema_copy(params: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tch::no_grad(|| {
        params
            .iter()
            .map(|(n, p)| (n.clone(), p.detach().copy()))
            .collect()
    })
}

/// Sets every gradient of `params` to zero (those not yet computed stay undefined).
pub(crate) fn zero_grads(params: &mut BTreeMap<String, Tensor>) {
    for p in params.values_mut() {
        p.zero_grad();
    }
}

/// ema = decay * ema + (1 - decay) * param (LlamaGen's `update_ema`), for each parameter.
pub(crate) fn update_ema(
    ema: &mut BTreeMap<String, Tensor>,
    params: &BTreeMap<String, Tensor>,
    decay: f64,
) {
    tch::no_grad(|| {
        for (name, p) in params {
            if let Some(e) = ema.get_mut(name) {
                let _ = e.lerp_(p, 1.0 - decay);
            }
        }
    });
}
