#!/usr/bin/env bash
# Installs what llamagen-rs needs and is missing; a second run only checks and returns.
#
#   - a project-local Python virtualenv (.venv) with PyTorch 2.11.0 (libtorch for tch) and
#     ONNX Runtime 1.31 (loaded by ort at run time), pinned in scripts/requirements.txt; on a
#     machine with an NVIDIA driver, ONNX Runtime's GPU build of the same release
#     (onnxruntime-gpu, whose CUDA execution provider runs the Inception, CLIP and T5);
#   - stable links .venv/libtorch and .venv/libonnxruntime.so that .cargo/config.toml points at,
#     so `cargo build`, `cargo test` and target/*/llamagen need no environment variables;
#   - libjpeg-turbo's TurboJPEG library (Debian's `libturbojpeg0-dev`), which ingest links;
#   - PostgreSQL server binaries (Debian's `postgresql`) when `initdb` cannot be found;
#   - Debian's `chromium` for the dashboard's browser tests when no chromium is installed;
#   - the rustfmt and clippy components when the toolchain lacks them.
#
# Usage: scripts/setup.sh [--build]
#   --build  only what building and packaging the binary needs (a container image's build
#            stage, Dockerfile): torch, onnxruntime and the CUDA headers the NCCL face
#            compiles against in .venv, libjpeg-turbo; none of the test-only Python
#            packages, PostgreSQL, chromium or Rust components
set -euo pipefail

scope=all
case "${1:-}" in
    "") ;;
    --build) scope=build ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option $1 (scripts/setup.sh --help)" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.llamagen-requirements.sha256"

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; return 1
    fi
}
apt_install() {
    log "installing Debian packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Disk ----------------------------------------------------------------------------------
# Said up front: short of room, the install or the build fails many minutes later with a bare
# "No space left on device" from pip or the linker. The figures are docs/BENCHMARKS.md's
# ("Build and test"): the virtualenv about 5.5 GB (torch's CUDA libraries are half of it), a
# debug test build about 4 GB under target/.
if [ "$scope" = all ]; then
    need_gb=0
    [ -s "$stamp" ] || need_gb=$((need_gb + 6))
    [ -d "$root/target/debug" ] || need_gb=$((need_gb + 4))
    free_gb=$(( $(df -Pk "$root" | awk 'NR == 2 { print $4 }') / 1048576 ))
    if [ "$free_gb" -lt "$need_gb" ]; then
        log "warning: $free_gb GB free under $root; installing and building the tests needs about $need_gb GB"
    fi
fi

# --- Python virtualenv with torch and onnxruntime ------------------------------------------
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then apt_install python3 python3-venv python3-pip; fi
if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv $venv"
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        apt_install python3-venv
        "$python" -m venv "$venv"
    fi
fi
# ONNX Runtime's GPU build (the same release, with the CUDA execution provider) where an NVIDIA
# driver is present, the CPU build elsewhere; LLAMAGEN_ONNXRUNTIME=cpu|gpu chooses by hand. Both
# install the `onnxruntime` module, so one replaces the other.
ort_build="${LLAMAGEN_ONNXRUNTIME:-}"
if [ -z "$ort_build" ]; then
    if [ -e /proc/driver/nvidia/version ] || nvidia-smi -L >/dev/null 2>&1; then ort_build=gpu; else ort_build=cpu; fi
fi
case "$ort_build" in cpu|gpu) ;; *) log "LLAMAGEN_ONNXRUNTIME must be cpu or gpu, not $ort_build"; exit 1 ;; esac
want="$(sha256sum "$req" | cut -d' ' -f1) onnxruntime-$ort_build $scope"
have="$(cat "$stamp" 2>/dev/null || true)"
# A full install serves a build too.
if [ "$have" != "$want" ] && [ "$have" != "${want% build} all" ]; then
    if [ "$scope" = build ]; then
        log "installing torch, onnxruntime and CUDA's headers as pinned in scripts/requirements.txt (torch is ~5 GB)"
        "$venv/bin/pip" install --disable-pip-version-check --no-cache-dir -q \
            $(grep -E '^(torch|onnxruntime|nvidia-cuda-crt|nvidia-cuda-cccl)==' "$req")
    else
        log "installing Python packages from scripts/requirements.txt (torch is ~5 GB; once per machine)"
        "$venv/bin/pip" install --disable-pip-version-check --no-cache-dir -q -r "$req"
    fi
    ort_version="$(sed -n 's/^onnxruntime==\([0-9.]*\).*/\1/p' "$req")"
    if [ "$ort_build" = gpu ]; then
        log "ONNX Runtime's GPU build: onnxruntime-gpu $ort_version in place of the CPU build"
        "$venv/bin/pip" uninstall --disable-pip-version-check -q -y onnxruntime
        "$venv/bin/pip" install --disable-pip-version-check --no-cache-dir -q "onnxruntime-gpu==$ort_version"
    elif "$venv/bin/pip" show -q onnxruntime-gpu 2>/dev/null; then
        "$venv/bin/pip" uninstall --disable-pip-version-check -q -y onnxruntime-gpu
        "$venv/bin/pip" install --disable-pip-version-check --no-cache-dir -q --force-reinstall "onnxruntime==$ort_version"
    fi
    echo "$want" >"$stamp"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -sfn "$site/torch" "$venv/libtorch"
ort_lib="$(ls "$site"/onnxruntime/capi/libonnxruntime.so.* | head -n1)"
ln -sfn "$ort_lib" "$venv/libonnxruntime.so"

# --- libjpeg-turbo (ingest's JPEG codec, linked statically by ingest/build.rs) ---------------
have_turbojpeg() {
    [ -n "${TURBOJPEG_LIB_DIR:-}" ] && return 0
    pkg-config --exists libturbojpeg 2>/dev/null && return 0
    ls /usr/lib/*/libturbojpeg.a /usr/lib/libturbojpeg.a /usr/local/lib/libturbojpeg.a >/dev/null 2>&1
}
if ! have_turbojpeg; then apt_install libturbojpeg0-dev pkg-config; fi

if [ "$scope" = build ]; then
    log "ready to build: $("$venv/bin/python" -c 'import torch, onnxruntime as ort; p = ", ".join(ort.get_available_providers()); print(f"torch {torch.__version__}, onnxruntime {ort.__version__} ({p})")')"
    exit 0
fi

# --- PostgreSQL server binaries ------------------------------------------------------------
find_initdb() {
    if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then return 0; fi
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
    command -v initdb >/dev/null
}
if ! find_initdb; then apt_install postgresql; fi

# --- Headless chromium for the dashboard's browser tests (dashboards/tests) ----------------
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    apt_install chromium
fi

# --- Rust components used by the test command -----------------------------------------------
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    log "adding rustfmt and clippy"
    rustup component add rustfmt clippy
fi

log "ready: $("$venv/bin/python" -c 'import torch, onnxruntime as ort; p = ", ".join(ort.get_available_providers()); print(f"torch {torch.__version__}, onnxruntime {ort.__version__} ({p})")')"
