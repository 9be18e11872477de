//! Records libtorch's library folder as an rpath of every binary and test that links tch, so
//! that they start without LD_LIBRARY_PATH. Each crate that links tch names this file as its
//! build script (`build = "../native/build.rs"`) because Cargo only applies link arguments to
//! the targets of the package whose build script emits them.

//!
//! Two folders, searched in order: `$ORIGIN/../lib/torch/lib`, where `scripts/package.sh` puts
//! libtorch beside a copied binary (the relocatable layout that workers on other hosts run),
//! and the build's own libtorch, so that `target/*/llamagen` works in place.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/torch/lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
}
