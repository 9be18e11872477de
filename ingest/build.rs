//! Links libjpeg-turbo's TurboJPEG library (`src/turbojpeg.rs`), statically when its archive
//! is installed so that a copied binary needs no libturbojpeg on the worker node.
//!
//! Found through pkg-config (`libturbojpeg`); `TURBOJPEG_LIB_DIR` names a folder holding
//! `libturbojpeg.a` or `libturbojpeg.so` instead. `scripts/setup.sh` installs Debian's
//! `libturbojpeg0-dev`.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TURBOJPEG_LIB_DIR");
    let dir = std::env::var_os("TURBOJPEG_LIB_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            pkg_config::Config::new()
                .cargo_metadata(false)
                .probe("libturbojpeg")
                .ok()
                .and_then(|lib| lib.link_paths.into_iter().next())
        })
        .or_else(|| {
            [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
                "/usr/local/lib",
            ]
            .iter()
            .map(PathBuf::from)
            .find(|d| has(d, "libturbojpeg.so") || has(d, "libturbojpeg.a"))
        });
    let Some(dir) = dir else {
        panic!(
            "libturbojpeg (libjpeg-turbo's TurboJPEG library) was not found: run scripts/setup.sh, \
             or install it (Debian/Ubuntu: apt-get install libturbojpeg0-dev), or set \
             TURBOJPEG_LIB_DIR to the folder holding libturbojpeg.a or libturbojpeg.so"
        );
    };
    println!("cargo:rustc-link-search=native={}", dir.display());
    if has(&dir, "libturbojpeg.a") {
        println!("cargo:rustc-link-lib=static=turbojpeg");
    } else {
        println!("cargo:rustc-link-lib=dylib=turbojpeg");
    }
}

fn has(dir: &Path, file: &str) -> bool {
    dir.join(file).is_file()
}
