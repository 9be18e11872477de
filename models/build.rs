//! Compiles `src/fused_adamw.cpp`, the C face of libtorch's fused AdamW kernel, against the
//! libtorch that tch links (see `native/libtorch_cpp.rs`).

include!("../native/libtorch_cpp.rs");

fn main() {
    compile_against_libtorch("src/fused_adamw.cpp", "llamagen_fused_adamw");
}
