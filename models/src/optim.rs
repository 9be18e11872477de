//! PyTorch's AdamW update and gradient clipping. tch's own optimizers do not expose their
//! moment buffers, and a checkpoint without them does not resume the same run, so the moments
//! live here; the update is either written out with tch's operations or handed to libtorch's
//! fused kernel (`at::_fused_adamw_`, bound in `src/fused_adamw.cpp`), which `torch.optim.AdamW`
//! runs for `fused=True`.

use std::collections::BTreeMap;

use llamagen_native::c_error::{ERROR_BYTES, message};
use tch::{Kind, Tensor};

/// AdamW's settings.
#[derive(Clone, Copy, Debug)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay one-dimensional tensors (biases, norm scales) too, as `torch.optim.AdamW` over
    /// `model.parameters()` does; LlamaGen's GPT trainer decays only tensors of 2+ dimensions.
    pub decay_vectors: bool,
    /// libtorch's fused kernel ([`fused_adamw`], `torch.optim.AdamW(fused=True)`, which
    /// LlamaGen's `train_c2i.py` asks for) instead of the update written out operation by
    /// operation: the same arithmetic up to float rounding, one pass over each tensor's memory.
    pub fused: bool,
}

impl AdamWSettings {
    /// LlamaGen's GPT settings (train_c2i.py): betas 0.9 / 0.95, eps 1e-8, weight decay 0.05
    /// on tensors of two or more dimensions only.
    pub fn llamagen_gpt(fused: bool) -> Self {
        AdamWSettings {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.05,
            decay_vectors: false,
            fused,
        }
    }
}

/// AdamW with PyTorch's update: decoupled decay, bias-corrected moments.
///
/// Sharded (ZeRO stage 1), it keeps the moments of the parameters it owns only and updates
/// those alone; the other ranks own and update the rest.
pub struct AdamW {
    pub(crate) m: BTreeMap<String, Tensor>,
    pub(crate) v: BTreeMap<String, Tensor>,
    /// The parameters this rank updates, when the state is sharded across ranks.
    pub(crate) owned: Option<std::collections::BTreeSet<String>>,
}

impl AdamW {
    /// Zero moments for each of `params` (their shapes, kinds and devices).
    pub fn new(params: &BTreeMap<String, Tensor>) -> Self {
        let zeros = |t: &Tensor| t.zeros_like();
        AdamW {
            m: params.iter().map(|(n, t)| (n.clone(), zeros(t))).collect(),
            v: params.iter().map(|(n, t)| (n.clone(), zeros(t))).collect(),
            owned: None,
        }
    }

    /// Keeps the moments of the `owned` parameters only, from now on updating those alone.
    pub(crate) fn shard(&mut self, owned: std::collections::BTreeSet<String>) {
        self.m.retain(|name, _| owned.contains(name));
        self.v.retain(|name, _| owned.contains(name));
        self.owned = Some(owned);
    }

    /// Whether the moments of every parameter in `params` are held here (a checkpoint needs
    /// them all).
    pub(crate) fn is_whole(&self, params: &BTreeMap<String, Tensor>) -> bool {
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
    pub(crate) fn entries(&self, prefix: &str) -> Vec<(String, Tensor)> {
        crate::checkpoint::entries(&format!("{prefix}.m."), &self.m)
            .chain(crate::checkpoint::entries(&format!("{prefix}.v."), &self.v))
            .collect()
    }

    /// Copies the moments back from a checkpoint's `{prefix}.m.*` and `{prefix}.v.*`.
    pub(crate) fn restore(
        &mut self,
        tensors: &mut BTreeMap<String, Tensor>,
        path: &std::path::Path,
        prefix: &str,
    ) -> Result<(), crate::ModelError> {
        crate::checkpoint::restore(tensors, path, &format!("{prefix}.m."), self.m.iter_mut())?;
        crate::checkpoint::restore(tensors, path, &format!("{prefix}.v."), self.v.iter_mut())
    }

    /// One step over `params` (by name, the names [`AdamW::new`] saw; another name is an error)
    /// from their gradients, in place. `step` counts from 1. Parameters without a gradient are
    /// skipped.
    pub fn update(
        &mut self,
        params: &BTreeMap<String, Tensor>,
        c: &AdamWSettings,
        lr: f64,
        step: i64,
    ) -> Result<(), crate::ModelError> {
        let _no_grad = tch::no_grad_guard();
        let decayed = |p: &Tensor| c.weight_decay != 0.0 && (p.dim() >= 2 || c.decay_vectors);
        let mut fused = [FusedGroup::default(), FusedGroup::default()];
        let bias1 = 1.0 - c.beta1.powi(step as i32);
        let bias2 = 1.0 - c.beta2.powi(step as i32);
        for (name, p) in params {
            let grad = p.grad();
            let mine = self.owned.as_ref().is_none_or(|owned| owned.contains(name));
            if !grad.defined() || !mine {
                continue;
            }
            let (Some(m), Some(v)) = (self.m.get_mut(name), self.v.get_mut(name)) else {
                return Err(crate::ModelError::Input(format!(
                    "AdamW has no moments for {name}: it was made for other parameters"
                )));
            };
            if c.fused {
                let group = &mut fused[usize::from(decayed(p))];
                group.params.push(p.shallow_clone());
                group.grads.push(grad);
                group.m.push(m.shallow_clone());
                group.v.push(v.shallow_clone());
                continue;
            }
            let mut p = p.shallow_clone();
            if decayed(&p) {
                let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let _ = m.lerp_(&grad, 1.0 - c.beta1);
            let _ = v.g_mul_scalar_(c.beta2);
            let _ = v.addcmul_(&(&grad * (1.0 - c.beta2)), &grad);
            let denom = v.sqrt() / bias2.sqrt() + c.eps;
            let _ = p.addcdiv_(&(&*m * (-lr / bias1)), &denom);
        }
        for (decay, group) in fused.iter().enumerate() {
            let weight_decay = if decay == 1 { c.weight_decay } else { 0.0 };
            fused_adamw(group, step, lr, c, weight_decay)?;
        }
        Ok(())
    }
}

/// The tensors of one call of the fused kernel, in matching order.
#[derive(Default)]
struct FusedGroup {
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

unsafe extern "C" {
    fn llg_fused_adamw(
        params: *const *const std::ffi::c_void,
        grads: *const *const std::ffi::c_void,
        exp_avgs: *const *const std::ffi::c_void,
        exp_avg_sqs: *const *const std::ffi::c_void,
        count: usize,
        step: f64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> std::ffi::c_int;
}

/// One step of libtorch's fused AdamW (`at::_fused_adamw_`, src/fused_adamw.cpp) over a group's
/// tensors, in place; `weight_decay` applies to every tensor of the group.
fn fused_adamw(
    group: &FusedGroup,
    step: i64,
    lr: f64,
    c: &AdamWSettings,
    weight_decay: f64,
) -> Result<(), crate::ModelError> {
    if group.params.is_empty() {
        return Ok(());
    }
    let pointers = |tensors: &[Tensor]| -> Vec<*const std::ffi::c_void> {
        tensors.iter().map(|t| t.as_ptr().cast()).collect()
    };
    let (p, g, m, v) = (
        pointers(&group.params),
        pointers(&group.grads),
        pointers(&group.m),
        pointers(&group.v),
    );
    let mut err = [0u8; ERROR_BYTES];
    // SAFETY: the four arrays hold `count` live tensor handles each (borrowed from `group` for
    // the call), and `err` is a buffer of `err.len()` bytes.
    let status = unsafe {
        llg_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            p.len(),
            step as f64,
            lr,
            c.beta1,
            c.beta2,
            weight_decay,
            c.eps,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if status == 0 {
        return Ok(());
    }
    Err(crate::ModelError::Torch(tch::TchError::Torch(format!(
        "fused AdamW: {}",
        message(&err)
    ))))
}

/// Scales all gradients so that their joint L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`, including its 1e-6 guard). Returns the norm before clipping.
pub(crate) fn clip_grad_norm(params: &BTreeMap<String, Tensor>, max_norm: f64) -> f64 {
    let total = joint_norm(&squared_norms(params));
    scale_grads(params.values(), total, max_norm);
    total
}

/// The joint L2 norm of all gradients, as [`clip_grad_norm`] measures it, without clipping.
pub(crate) fn grad_norm(params: &BTreeMap<String, Tensor>) -> f64 {
    joint_norm(&squared_norms(params))
}

/// Each gradient's squared L2 norm, accumulated in f64, in `params`' order (0 for a parameter
/// without a gradient). Ranks that each hold some of the gradients sum these lists and then
/// take [`joint_norm`], which gives every rank the norm one process computes, to the bit.
pub(crate) fn squared_norms(params: &BTreeMap<String, Tensor>) -> Vec<f64> {
    params.values().map(squared_norm).collect()
}

/// One parameter's entry of [`squared_norms`].
pub(crate) fn squared_norm(param: &Tensor) -> f64 {
    tch::no_grad(|| {
        let g = param.grad();
        if g.defined() {
            g.square().sum(Kind::Double).double_value(&[])
        } else {
            0.0
        }
    })
}

/// The joint norm of gradients whose [`squared_norms`] these are.
pub(crate) fn joint_norm(squares: &[f64]) -> f64 {
    squares.iter().sum::<f64>().sqrt()
}

/// Scales the gradients of `params` by `max_norm / (total + 1e-6)` when that is below 1: the
/// clipping step of [`clip_grad_norm`] for a joint norm `total` measured already.
pub(crate) fn scale_grads<'a>(params: impl Iterator<Item = &'a Tensor>, total: f64, max_norm: f64) {
    let coef = max_norm / (total + 1e-6);
    if coef >= 1.0 {
        return;
    }
    tch::no_grad(|| {
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.g_mul_scalar_(coef);
            }
        }
    });
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

/// Sets every gradient of `params` to zero in place (those not yet computed stay undefined),
/// so that gradients that are views of a data-parallel bucket stay its views.
pub(crate) fn zero_grads(params: &mut BTreeMap<String, Tensor>) {
    tch::no_grad(|| {
        for p in params.values() {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `torch.optim.AdamW` on LlamaGen's settings, fused and plain, written by
    /// scripts/make_adamw_fixtures.py.
    fn fixture() -> BTreeMap<String, Tensor> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/adamw.safetensors"
        );
        Tensor::read_safetensors(path)
            .expect("fixture")
            .into_iter()
            .collect()
    }

    /// Three steps of our AdamW, `fused` or not, from the fixture's start on its gradients;
    /// returns the parameters and the optimizer.
    fn three_steps(fused: bool) -> (BTreeMap<String, Tensor>, AdamW, BTreeMap<String, Tensor>) {
        let expected = fixture();
        let params: BTreeMap<String, Tensor> = expected
            .iter()
            .filter_map(|(k, t)| {
                let name = k.strip_prefix("param.")?;
                Some((name.to_string(), t.copy().set_requires_grad(true)))
            })
            .collect();
        let settings = AdamWSettings::llamagen_gpt(fused);
        let mut adamw = AdamW::new(&params);
        for (step, lr) in [1e-3, 2e-3, 3e-3].into_iter().enumerate() {
            for (name, p) in &params {
                let mut grad = p.grad();
                if !grad.defined() {
                    // The first backward pass allocates it; a zero-size sum starts one here.
                    (p * 0.0).sum(Kind::Float).backward();
                    grad = p.grad();
                }
                grad.copy_(&expected[&format!("grad.{step}.{name}")]);
            }
            adamw
                .update(&params, &settings, lr, step as i64 + 1)
                .unwrap();
        }
        (params, adamw, expected)
    }

    fn largest_relative(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b.abs().max().double_value(&[]).max(1e-30);
        (a - b).abs().max().double_value(&[]) / scale
    }

    #[test]
    fn both_updates_match_torch_adamw() {
        for (fused, kind, tolerance) in [(true, "fused", 0.0), (false, "plain", 2e-7)] {
            let (params, adamw, expected) = three_steps(fused);
            for (name, p) in &params {
                for (what, ours) in [
                    ("param", p),
                    ("exp_avg", &adamw.m[name]),
                    ("exp_avg_sq", &adamw.v[name]),
                ] {
                    let theirs = &expected[&format!("{kind}.{what}.{name}")];
                    let difference = largest_relative(ours, theirs);
                    assert!(
                        difference <= tolerance,
                        "{kind} {what} of {name}: {difference:e} from torch"
                    );
                }
            }
        }
    }

    #[test]
    fn the_fused_kernel_skips_what_another_rank_owns() {
        let expected = fixture();
        let params: BTreeMap<String, Tensor> = expected
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix("param.")?.to_string(), t.copy())))
            .collect();
        let mut adamw = AdamW::new(&params);
        adamw.shard(["matrix".to_string()].into_iter().collect());
        for p in params.values() {
            let mut p = p.shallow_clone();
            let _ = p.requires_grad_(true);
            (&p * 1.0).sum(Kind::Float).backward();
        }
        let settings = AdamWSettings::llamagen_gpt(true);
        adamw.update(&params, &settings, 1e-3, 1).unwrap();
        assert_eq!(adamw.m.len(), 1);
        assert_eq!(
            largest_relative(&params["bias"], &expected["param.bias"]),
            0.0
        );
        assert!(largest_relative(&params["matrix"], &expected["param.matrix"]) > 0.0);
    }

    #[test]
    fn a_mismatched_moment_is_an_error_not_a_crash() {
        let p = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&p * 2.0).sum(Kind::Float).backward();
        let params: BTreeMap<String, Tensor> = [("p".to_string(), p)].into_iter().collect();
        let mut adamw = AdamW::new(&params);
        adamw.m.insert(
            "p".to_string(),
            Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
        );
        let settings = AdamWSettings {
            weight_decay: 0.0,
            ..AdamWSettings::llamagen_gpt(true)
        };
        let error = adamw.update(&params, &settings, 1e-3, 1).unwrap_err();
        assert!(error.to_string().contains("fused AdamW"), "{error}");
    }
}
