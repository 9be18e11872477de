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

/// The include folders holding each of `headers` among the CUDA wheels that torch's CUDA wheel
/// depends on (`site-packages/nvidia/*/include`), when libtorch has a CUDA half; `None` if it
/// has none or a header is missing.
fn cuda_headers(libtorch: &std::path::Path, headers: &[&str]) -> Option<Vec<std::path::PathBuf>> {
    if !libtorch.join("lib/libtorch_cuda.so").exists() {
        return None;
    }
    // LIBTORCH may be a link to the wheel's folder (scripts/setup.sh makes `.venv/libtorch`).
    let nvidia = libtorch.canonicalize().ok()?.parent()?.join("nvidia");
    let folders: Vec<std::path::PathBuf> = std::fs::read_dir(&nvidia)
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("include")))
        .collect();
    headers
        .iter()
        .map(|header| folders.iter().find(|f| f.join(header).exists()).cloned())
        .collect()
}

/// Compiles `source` (with `defines` and the CUDA `includes`) and links it into the shared
/// object `target` against libtorch's CUDA half. It carries no rpath: it is loaded only after
/// libtorch_cuda (llamagen-native's `shim`), whose libraries then satisfy its needs by name.
fn build_cuda_shim(
    libtorch: &std::path::Path,
    source: &str,
    defines: &[&str],
    includes: &[std::path::PathBuf],
    target: &std::path::Path,
) {
    println!("cargo:rerun-if-changed={source}");
    let mut build = libtorch_build(libtorch);
    build.pic(true).include("src");
    for define in defines {
        build.define(define, None);
    }
    for folder in includes {
        build.include(folder);
    }
    let objects = build.file(source).compile_intermediates();
    let status = build
        .get_compiler()
        .to_command()
        .arg("-shared")
        .arg("-o")
        .arg(target)
        .args(&objects)
        .arg(format!("-L{}", libtorch.join("lib").display()))
        .args(["-ltorch_cuda", "-ltorch_cpu", "-lc10_cuda", "-lc10"])
        .status()
        .expect("running the C++ compiler to link a CUDA shim");
    assert!(status.success(), "linking {} failed", target.display());
}
