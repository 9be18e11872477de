//! Compiles `src/c10d.cpp`, the C face of libtorch's c10d, against the libtorch that tch links
//! (see `native/libtorch_cpp.rs`), and, where that libtorch has a CUDA half, `src/nccl.cpp` into
//! a shared object of its own (`libllamagen_nccl.so` in OUT_DIR), which `src/nccl.rs` embeds and
//! loads at run time. A CPU-only libtorch builds without it (`cfg(llamagen_nccl)` unset).

include!("../native/libtorch_cpp.rs");

use std::path::PathBuf;

fn main() {
    compile_against_libtorch(&["src/c10d.cpp"], "llamagen_c10d");
    println!("cargo::rustc-check-cfg=cfg(llamagen_nccl)");
    println!("cargo:rerun-if-changed=src/c10d_group.h");
    let libtorch = libtorch_dir();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    match cuda_headers(&libtorch, &["cuda_runtime_api.h", "nccl.h"]) {
        Some(includes) => {
            // The definitions libtorch_cuda was built with, which select ProcessGroupNCCL's
            // declarations in its header.
            build_cuda_shim(
                &libtorch,
                "src/nccl.cpp",
                &["USE_C10D_NCCL", "USE_CUDA"],
                &includes,
                &out.join("libllamagen_nccl.so"),
            );
            println!("cargo:rustc-cfg=llamagen_nccl");
        }
        None => println!(
            "cargo:warning=no libtorch_cuda.so, cuda_runtime_api.h or nccl.h beside {}: built without NCCL",
            libtorch.display()
        ),
    }
}
