//! libtorch's CUDA half loaded at run time, without LD_PRELOAD. This machine may have no GPU,
//! so the test forces the load (`LLAMAGEN_LOAD_CUDA=1`): the library must come from the folder
//! of the libtorch this process runs, load with its own dependencies found, and leave the CPU
//! path working. On a GPU machine the same load is what makes `tch::Cuda::is_available()` true.

use llamagen_native::torch::{CudaLoad, load_cuda};

#[test]
fn libtorch_cuda_loads_from_the_running_libtorch_s_folder() {
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe { std::env::set_var("LLAMAGEN_LOAD_CUDA", "1") };
    let x = tch::Tensor::from_slice(&[1.0f32, 2.0]);
    let maps = || std::fs::read_to_string("/proc/self/maps").unwrap();
    let cpu_dir = maps()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .map(|p| std::path::Path::new(p).parent().unwrap().to_path_buf())
        .expect("libtorch_cpu.so is mapped");
    match load_cuda() {
        CudaLoad::Loaded(path) => {
            assert_eq!(path, &cpu_dir.join("libtorch_cuda.so"));
            assert!(
                maps().contains("/libtorch_cuda.so"),
                "mapped after the load"
            );
            // Loading again is a no-op.
            assert_eq!(load_cuda(), &CudaLoad::Loaded(path.clone()));
        }
        CudaLoad::CpuBuild(dir) => assert_eq!(dir, &cpu_dir),
        other => panic!("{other}"),
    }
    // Without a driver CUDA stays unavailable, and the CPU keeps working.
    if !std::path::Path::new("/proc/driver/nvidia/version").exists() {
        assert!(!tch::Cuda::is_available());
    }
    let y: Vec<f32> = Vec::try_from(&x * 2.0).unwrap();
    assert_eq!(y, [2.0, 4.0]);
}
