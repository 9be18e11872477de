//! `scripts/package.sh`: the binary and the libraries it loads in one folder that runs from
//! wherever it is moved, with no environment variable: libtorch through the binary's
//! `$ORIGIN`-relative RUNPATH, ONNX Runtime found beside the binary.

use crate::common::{repo, text};

use std::path::Path;
use std::process::Command;

/// `llamagen doctor --no-db` from `bin` with an empty environment (no LIBTORCH, no
/// ORT_DYLIB_PATH, no LD_LIBRARY_PATH).
fn doctor(bin: &Path) -> String {
    let out = Command::new(bin)
        .args(["doctor", "--no-db"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    printed
}

#[test]
fn a_packaged_binary_runs_on_its_own_libraries_wherever_it_is_moved() {
    let dir = tempfile::tempdir().unwrap();
    let packaged = dir.path().join("llamagen-cpu");
    let out = Command::new(repo().join("scripts/package.sh"))
        .args([
            "--cpu",
            "--link",
            "--binary",
            env!("CARGO_BIN_EXE_llamagen"),
        ])
        .arg(&packaged)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for file in [
        "bin/llamagen",
        "lib/torch/lib/libtorch_cpu.so",
        "lib/torch/lib/libc10.so",
        "lib/torch/version.py",
    ] {
        assert!(packaged.join(file).is_file(), "no {file}");
    }
    assert!(
        !packaged.join("lib/torch/lib/libtorch_cuda.so").exists(),
        "--cpu leaves libtorch's CUDA half out"
    );

    // Moved after packaging, as a copy to another host would be.
    let moved = dir.path().join("elsewhere/llamagen");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&packaged, &moved).unwrap();
    let printed = doctor(&moved.join("bin/llamagen"));
    let libtorch = format!("at {}", moved.join("lib/torch").display());
    assert!(printed.contains(&libtorch), "{printed}");
    let ort = format!(
        "at {}",
        moved.join("lib/onnxruntime/libonnxruntime.so").display()
    );
    assert!(printed.contains(&ort), "{printed}");
    assert!(printed.contains("tiny MLP ran"), "{printed}");
    assert!(printed.contains("d/dx sum(x^2)"), "{printed}");

    // A package on a worker without server binaries or DATABASE_URL: the advice is the
    // package's, not the checkout's scripts/setup.sh.
    let out = Command::new(moved.join("bin/llamagen"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("doctor")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LLAMAGEN_PG_BIN", dir.path().join("no-server-binaries"))
        .output()
        .unwrap();
    let printed = text(&out);
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("2 problem(s); this package carries its own libraries and takes its database from DATABASE_URL"),
        "{printed}"
    );
    assert!(!printed.contains("scripts/setup.sh"), "{printed}");
    assert!(
        printed.contains("the Dockerfile's cuda flavour carries onnxruntime-gpu"),
        "{printed}"
    );
}

#[test]
fn packaging_without_a_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("scripts/package.sh"))
        .args(["--binary"])
        .arg(dir.path().join("missing"))
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("no binary at"), "{}", text(&out));
    assert!(!dir.path().join("out").exists());
}
