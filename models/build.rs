//! Compiles the C faces of the libtorch pieces tch does not bind, `src/fused_adamw.cpp` (the
//! fused AdamW kernel) and `src/device_memory.cpp` (the caching allocator's peak), against the
//! libtorch that tch links (see `native/libtorch_cpp.rs`), and, where that libtorch has a CUDA
//! half, `src/cuda_graph.cpp` (CUDA graph capture and replay) into a shared object of its own
//! (`libllamagen_cuda_graph.so` in OUT_DIR), which `src/cuda_graph.rs` embeds and loads at run
//! time. A CPU-only libtorch builds without it (`cfg(llamagen_cuda_graph)` unset).

include!("../native/libtorch_cpp.rs");

use std::path::PathBuf;

fn main() {
    compile_against_libtorch(
        &["src/fused_adamw.cpp", "src/device_memory.cpp"],
        "llamagen_models_native",
    );
    println!("cargo::rustc-check-cfg=cfg(llamagen_cuda_graph)");
    let libtorch = libtorch_dir();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    match cuda_headers(&libtorch, &["cuda_runtime_api.h"]) {
        Some(includes) => {
            build_cuda_shim(
                &libtorch,
                "src/cuda_graph.cpp",
                &["USE_CUDA"],
                &includes,
                &out.join("libllamagen_cuda_graph.so"),
            );
            println!("cargo:rustc-cfg=llamagen_cuda_graph");
        }
        None => println!(
            "cargo:warning=no libtorch_cuda.so or cuda_runtime_api.h beside {}: built without CUDA graphs",
            libtorch.display()
        ),
    }
}
