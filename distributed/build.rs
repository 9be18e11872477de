//! Compiles `src/c10d.cpp`, the C face of libtorch's c10d, against the libtorch that tch links
//! (see `native/libtorch_cpp.rs`).

include!("../native/libtorch_cpp.rs");

fn main() {
    compile_against_libtorch(&["src/c10d.cpp"], "llamagen_c10d");
}
