//! Compiles the C faces of the libtorch pieces tch does not bind, `src/fused_adamw.cpp` (the
//! fused AdamW kernel) and `src/device_memory.cpp` (the caching allocator's peak), against the
//! libtorch that tch links (see `native/libtorch_cpp.rs`).

include!("../native/libtorch_cpp.rs");

fn main() {
    compile_against_libtorch(
        &["src/fused_adamw.cpp", "src/device_memory.cpp"],
        "llamagen_models_native",
    );
}
