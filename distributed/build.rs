//! Compiles `src/c10d.cpp` against the headers of the libtorch that tch links (`LIBTORCH`, set
//! by `.cargo/config.toml` to the virtualenv's torch), and records libtorch's library folder as
//! an rpath, as `native/build.rs` does for the other crates.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=src/c10d.cpp");
    let libtorch = PathBuf::from(
        std::env::var("LIBTORCH")
            .expect("LIBTORCH names the libtorch to build against (scripts/setup.sh installs it)"),
    );
    let include = libtorch.join("include");
    cc::Build::new()
        .cpp(true)
        .file("src/c10d.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // torch's wheels since 2.7 use the C++11 string ABI, as torch-sys assumes.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("llamagen_c10d");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        libtorch.join("lib").display()
    );
}
