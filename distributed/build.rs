//! Compiles `src/c10d.cpp`, the C face of libtorch's c10d, against the libtorch that tch links
//! (see `native/libtorch_cpp.rs`), and, where that libtorch has a CUDA half, `src/nccl.cpp` into
//! a shared object of its own (`libllamagen_nccl.so` in OUT_DIR), which `src/nccl.rs` embeds and
//! loads at run time. A CPU-only libtorch builds without it (`cfg(llamagen_nccl)` unset).

include!("../native/libtorch_cpp.rs");

use std::path::{Path, PathBuf};

fn main() {
    compile_against_libtorch(&["src/c10d.cpp"], "llamagen_c10d");
    println!("cargo::rustc-check-cfg=cfg(llamagen_nccl)");
    println!("cargo:rerun-if-changed=src/nccl.cpp");
    println!("cargo:rerun-if-changed=src/c10d_group.h");
    let libtorch = libtorch_dir();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    match cuda_headers(&libtorch) {
        Some(includes) => {
            build_nccl_shim(&libtorch, &includes, &out.join("libllamagen_nccl.so"));
            println!("cargo:rustc-cfg=llamagen_nccl");
        }
        None => println!(
            "cargo:warning=no libtorch_cuda.so, cuda_runtime_api.h or nccl.h beside {}: built without NCCL",
            libtorch.display()
        ),
    }
}

/// The include folders of the CUDA runtime and NCCL wheels that torch's CUDA wheel depends on
/// (`site-packages/nvidia/*/include`), when libtorch has a CUDA half.
fn cuda_headers(libtorch: &Path) -> Option<Vec<PathBuf>> {
    if !libtorch.join("lib/libtorch_cuda.so").exists() {
        return None;
    }
    // LIBTORCH may be a link to the wheel's folder (scripts/setup.sh makes `.venv/libtorch`).
    let nvidia = libtorch.canonicalize().ok()?.parent()?.join("nvidia");
    let folders: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("include")))
        .collect();
    let holding = |header: &str| folders.iter().find(|f| f.join(header).exists()).cloned();
    Some(vec![holding("cuda_runtime_api.h")?, holding("nccl.h")?])
}

/// Compiles `src/nccl.cpp` and links it into the shared object `target`, against libtorch's CUDA
/// half. It carries no rpath: it is loaded only after libtorch_cuda, whose libraries then
/// satisfy its needs by name.
fn build_nccl_shim(libtorch: &Path, cuda_includes: &[PathBuf], target: &Path) {
    let mut build = libtorch_build(libtorch);
    build
        .pic(true)
        .include("src")
        // The definitions libtorch_cuda was built with, which select ProcessGroupNCCL's
        // declarations in its header.
        .define("USE_C10D_NCCL", None)
        .define("USE_CUDA", None);
    for folder in cuda_includes {
        build.include(folder);
    }
    let objects = build.file("src/nccl.cpp").compile_intermediates();
    let compiler = build.get_compiler();
    let status = compiler
        .to_command()
        .arg("-shared")
        .arg("-o")
        .arg(target)
        .args(&objects)
        .arg(format!("-L{}", libtorch.join("lib").display()))
        .args(["-ltorch_cuda", "-ltorch_cpu", "-lc10_cuda", "-lc10"])
        .status()
        .expect("running the C++ compiler to link libllamagen_nccl.so");
    assert!(status.success(), "linking libllamagen_nccl.so failed");
}
