//! bf16 autocast on CUDA, as LlamaGen's `train_c2i.py --mixed-precision bf16` runs its forward
//! pass under `torch.autocast("cuda", dtype=torch.bfloat16)`.
//!
//! tch's `autocast` switches CUDA autocast on but leaves libtorch's default dtype for it, fp16,
//! has no call to choose bf16, and goes through libtorch calls that print a deprecation warning
//! every time (once per training step). libtorch exports the calls it needs
//! (`at::autocast::set_autocast_dtype`, `set_autocast_enabled`, the nesting counter), so they
//! are bound here by their mangled names. Arguments are `int8_t` enums and `bool`, results
//! `int8_t`/`bool`/`int`, which the C and C++ calling conventions pass alike; the symbols belong
//! to libtorch 2.11, which the workspace pins (tch =0.24.0), and a changed libtorch fails to link
//! rather than misbehave. The unit test below reads the settings back through the getters.

/// `c10::DeviceType::CUDA`.
const CUDA: i8 = 1;
/// `c10::ScalarType::Half`, libtorch's default CUDA autocast dtype.
#[cfg(test)]
const HALF: i8 = 5;
/// `c10::ScalarType::BFloat16`.
const BFLOAT16: i8 = 15;

unsafe extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device_type: i8) -> i8;
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device_type: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device_type: i8) -> bool;
    #[link_name = "_ZN2at8autocast17increment_nestingEv"]
    fn at_increment_nesting() -> i32;
    #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
    fn at_decrement_nesting() -> i32;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn at_clear_cache();
}

fn cuda_dtype() -> i8 {
    // SAFETY: a plain getter of a process-wide setting; the device type is a valid enum value.
    unsafe { at_get_autocast_dtype(CUDA) }
}

fn set_cuda_dtype(dtype: i8) {
    // SAFETY: as above; `dtype` is a valid `c10::ScalarType` (BFloat16, or a value read back).
    unsafe { at_set_autocast_dtype(CUDA, dtype) }
}

fn cuda_enabled() -> bool {
    // SAFETY: a plain getter of a process-wide setting.
    unsafe { at_is_autocast_enabled(CUDA) }
}

/// Runs `f` with CUDA autocast in bf16 when `enabled` (matrix products and convolutions in bf16,
/// reductions, norms and losses in fp32, as PyTorch's autocast lists say), plainly otherwise.
/// The backward pass belongs outside, as in PyTorch. The previous settings come back after `f`,
/// also when it panics.
pub fn bf16<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    let _guard = Bf16::enter();
    f()
}

/// What `torch.autocast.__enter__`/`__exit__` do for one device.
struct Bf16 {
    was_enabled: bool,
    dtype: i8,
}

impl Bf16 {
    fn enter() -> Self {
        let guard = Bf16 {
            was_enabled: cuda_enabled(),
            dtype: cuda_dtype(),
        };
        set_cuda_dtype(BFLOAT16);
        // SAFETY: setters and a counter of process-wide state, balanced in `drop`.
        unsafe {
            at_set_autocast_enabled(CUDA, true);
            at_increment_nesting();
        }
        guard
    }
}

impl Drop for Bf16 {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; the cast-weight cache is cleared when the outermost region
        // ends, as PyTorch does.
        unsafe {
            if at_decrement_nesting() == 0 {
                at_clear_cache();
            }
            at_set_autocast_enabled(CUDA, self.was_enabled);
        }
        set_cuda_dtype(self.dtype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn the_cuda_autocast_dtype_is_bf16_inside_and_restored_after() {
        // Needs no GPU: the dtype is a process-wide setting. This checks the binding itself.
        let before = cuda_dtype();
        assert_eq!(before, HALF, "libtorch's default CUDA autocast dtype");
        assert!(!cuda_enabled());
        let inside = bf16(true, || (cuda_dtype(), cuda_enabled()));
        assert_eq!(inside, (BFLOAT16, true));
        assert_eq!((cuda_dtype(), cuda_enabled()), (before, false));
        assert_eq!(bf16(false, cuda_dtype), before);
        let nested = bf16(true, || bf16(true, cuda_enabled) && cuda_enabled());
        assert!(nested, "an inner region leaves the outer one on");
        assert!(!cuda_enabled());
    }

    #[test]
    fn on_the_cpu_autocast_changes_nothing() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let plain = a.matmul(&a);
        let cast = bf16(true, || a.matmul(&a));
        assert_eq!(cast.kind(), Kind::Float);
        assert_eq!(
            Vec::<f32>::try_from(cast.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(plain.flatten(0, -1)).unwrap()
        );
    }
}
