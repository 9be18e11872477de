// Included by the build scripts of the crates that compile a C++ face over libtorch
// (`include!("../native/libtorch_cpp.rs")`): it compiles their source against the headers of
// the libtorch that tch links (`LIBTORCH`, set by `.cargo/config.toml` to the virtualenv's
// torch), links libtorch, and records its library folders as rpaths, as `native/build.rs`
// does for the other crates: `$ORIGIN/../lib/torch/lib` first (the relocatable layout of
// `scripts/package.sh`), then the build's own libtorch.

/// Compiles `sources` (relative to the crate) into the static library `name` and links it
/// with libtorch.
fn compile_against_libtorch(sources: &[&str], name: &str) {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    for source in sources {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-changed=../native/cpp/llg_error.h");
    let libtorch = libtorch_dir();
    libtorch_build(&libtorch).files(sources).compile(name);
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/torch/lib");
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        libtorch.join("lib").display()
    );
}

/// The libtorch to build against (`LIBTORCH`, which `.cargo/config.toml` sets).
fn libtorch_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("LIBTORCH")
            .expect("LIBTORCH names the libtorch to build against (scripts/setup.sh installs it)"),
    )
}

/// A C++ build with libtorch's headers (and `native/cpp`) on the include path and libtorch's
/// ABI, to which the caller adds its sources.
fn libtorch_build(libtorch: &std::path::Path) -> cc::Build {
    let include = libtorch.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("../native/cpp")
        .flag("-std=c++17")
        // torch's wheels since 2.7 use the C++11 string ABI, as torch-sys assumes.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    build
}
