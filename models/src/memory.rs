//! The peak memory a training process used over an interval, for the logged metrics: on CUDA
//! the caching allocator's peak of allocated bytes (`torch.cuda.max_memory_allocated`, then
//! `reset_peak_memory_stats`, through `src/device_memory.cpp`), on the CPU the process's peak
//! resident set (`VmHWM`, reset through `/proc/self/clear_refs`).

use tch::Device;

unsafe extern "C" {
    fn llg_cuda_take_peak_allocated(
        device: std::ffi::c_int,
        peak: *mut i64,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> std::ffi::c_int;
}

/// The peak bytes used on `device` since the previous call (or since the process started),
/// starting a new interval. `None` where it cannot be read: a CUDA device without libtorch's
/// CUDA half loaded, or a system without `/proc`. Where the kernel refuses to reset the
/// resident peak, the CPU figure is the peak since the process started.
pub fn take_peak(device: Device) -> Option<u64> {
    match device {
        Device::Cuda(index) => {
            let mut peak = 0i64;
            let mut err = [0u8; 512];
            // SAFETY: `peak` and `err` are live for the call; `err` has `err.len()` bytes.
            let status = unsafe {
                llg_cuda_take_peak_allocated(
                    index as std::ffi::c_int,
                    &mut peak,
                    err.as_mut_ptr().cast(),
                    err.len(),
                )
            };
            (status == 0).then_some(peak.max(0) as u64)
        }
        _ => {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            // "5" resets the peak resident set to the current one (Linux 4.0 and later).
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            Some(kib * 1024)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_peak_sees_an_allocation_and_resets() {
        let _ = take_peak(Device::Cpu);
        let before = take_peak(Device::Cpu).expect("this is Linux");
        {
            // 512 MiB, touched, then freed: the peak keeps it, the next interval does not.
            let big = tch::Tensor::ones([128 << 20], (tch::Kind::Float, Device::Cpu));
            assert_eq!(big.double_value(&[7]), 1.0);
        }
        let with = take_peak(Device::Cpu).unwrap();
        assert!(with >= before + (400 << 20), "{before} then {with}");
        let after = take_peak(Device::Cpu).unwrap();
        assert!(after + (400 << 20) <= with, "{with} then {after}");
    }

    #[test]
    fn cuda_without_its_libraries_is_none() {
        if tch::Cuda::is_available() {
            return;
        }
        assert_eq!(take_peak(Device::Cuda(0)), None);
    }
}
