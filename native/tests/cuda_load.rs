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
    // `--device cuda` gets the device, or an error that says what the load found.
    match llamagen_native::torch::cuda_device() {
        Ok(device) => {
            assert!(tch::Cuda::is_available());
            assert_eq!(device, tch::Device::Cuda(0));
        }
        Err(why) => {
            assert!(!tch::Cuda::is_available());
            assert_eq!(why, format!("no CUDA device: {}", load_cuda()));
        }
    }
}

/// Two shims loaded one after the other are two libraries, each with its own symbols, even once
/// the first one's handle is gone (callers keep only the functions): the loader knows a library
/// by its `/proc/self/fd/N` path, so a first shim's file must not be closed and its descriptor
/// number handed to the second.
#[test]
fn shims_loaded_in_turn_are_distinct_libraries() {
    use llamagen_native::cuda_shim;
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe { std::env::set_var("LLAMAGEN_LOAD_CUDA", "1") };
    if !matches!(load_cuda(), CudaLoad::Loaded(_)) {
        assert!(cuda_shim::cuda_loaded().is_err());
        eprintln!("skipped: this libtorch has no CUDA half");
        return;
    }
    cuda_shim::cuda_loaded().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let build = |name: &str, value: i32| {
        let source = dir.path().join(format!("{name}.c"));
        let object = dir.path().join(format!("lib{name}.so"));
        std::fs::write(&source, format!("int {name}(void) {{ return {value}; }}\n")).unwrap();
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&object)
            .arg(&source)
            .status()
            .expect("a C compiler (the build uses it too)");
        assert!(status.success());
        std::fs::read(object).unwrap()
    };
    let (first_bytes, second_bytes) = (build("first", 1), build("second", 2));
    let call = |shim: &cuda_shim::Shim, symbol: &std::ffi::CStr| {
        let f = shim.symbol(symbol).unwrap();
        // SAFETY: the symbol is `int f(void)` as compiled above.
        unsafe { std::mem::transmute::<*mut std::ffi::c_void, extern "C" fn() -> i32>(f)() }
    };
    {
        let first = cuda_shim::load(c"libfirst.so", &first_bytes).unwrap();
        assert_eq!(call(&first, c"first"), 1);
    }
    let second = cuda_shim::load(c"libsecond.so", &second_bytes).unwrap();
    assert_eq!(call(&second, c"second"), 2);
    let missing = second.symbol(c"first").unwrap_err();
    assert!(missing.contains("libsecond.so has no"), "{missing}");
}
