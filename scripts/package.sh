#!/usr/bin/env bash
# Packs a built llamagen binary with the native libraries it loads into one folder that runs
# wherever it is copied (another host, a container image, a shared file system), with no
# virtualenv and no environment variable:
#
#   OUT/bin/llamagen
#   OUT/lib/torch/lib/          libtorch, found through the binary's RUNPATH $ORIGIN/../lib/torch/lib
#   OUT/lib/torch/version.py    the wheel's version, which `llamagen doctor` reports
#   OUT/lib/nvidia/...          the CUDA libraries of the torch wheel, where libtorch's own
#                               RPATH ($ORIGIN/../../nvidia/*/lib) looks for them
#   OUT/lib/onnxruntime/        ONNX Runtime, which the binary looks for beside itself
#
# Usage: scripts/package.sh [--binary PATH] [--cpu] [--link] OUT
#   --binary PATH  the binary to pack (default target/release/llamagen; build it first with
#                  `cargo build --release -p llamagen-cli`)
#   --cpu          only what the binary links: leave out libtorch's CUDA half and every NVIDIA
#                  library but the CUDA runtime the CPU half names (about 0.5 GB instead of
#                  about 4 GB with the CUDA wheel)
#   --link         hard-link the libraries instead of copying them where the file system
#                  allows (a package next to the build, as the tests make)
#
# The libraries come from the virtualenv scripts/setup.sh made (.venv/libtorch and
# .venv/libonnxruntime.so), the ones the binary was built against.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="$root/target/release/llamagen"
cpu=0
link=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --cpu) cpu=1; shift ;;
        --link) link=1; shift ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "package: unknown option $1" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
[ -n "$out" ] || { echo "package: name the output folder (scripts/package.sh --help)" >&2; exit 2; }
[ -x "$binary" ] || { echo "package: no binary at $binary; build it first" >&2; exit 1; }
torch="$(readlink -f "$root/.venv/libtorch")"
ort="$(readlink -f "$root/.venv/libonnxruntime.so")"
[ -d "$torch/lib" ] || { echo "package: no libtorch at $root/.venv/libtorch; run scripts/setup.sh" >&2; exit 1; }
[ -f "$ort" ] || { echo "package: no ONNX Runtime at $root/.venv/libonnxruntime.so; run scripts/setup.sh" >&2; exit 1; }
site="$(dirname "$torch")"

# Copies FILE to DEST (a folder), hard-linking where asked and possible.
put() {
    mkdir -p "$2"
    if [ "$link" = 1 ] && ln -f "$1" "$2/" 2>/dev/null; then return; fi
    cp -f "$1" "$2/"
}

rm -rf "$out.partial"
mkdir -p "$out.partial/bin" "$out.partial/lib/torch/lib" "$out.partial/lib/onnxruntime"
put "$binary" "$out.partial/bin"
put "$torch/version.py" "$out.partial/lib/torch"

# Copies a library found under the wheel's site-packages to the same relative place under lib/,
# with the name the loader asks for when the file carries a longer one.
put_relative() {
    local asked="$1" real rel
    real="$(readlink -f "$asked")"
    rel="${real#"$site"/}"
    put "$real" "$out.partial/lib/$(dirname "$rel")"
    [ "$(basename "$asked")" = "$(basename "$real")" ] ||
        ln -sf "$(basename "$real")" "$out.partial/lib/$(dirname "$rel")/$(basename "$asked")"
}

if [ "$cpu" = 1 ]; then
    # Exactly what the binary links, transitively: libtorch's CPU half and, with the CUDA
    # wheel, the CUDA runtime it names. libtorch_cuda.so is left out (it is loaded at run time
    # only where an NVIDIA driver is present).
    ldd "$binary" | awk '$3 ~ /^\// {print $3}' | while read -r dep; do
        case "$(readlink -f "$dep")" in "$site"/*) put_relative "$dep" ;; esac
    done
else
    # The whole of libtorch but its Python bindings, and NVIDIA's libraries at the same place
    # relative to it as in the wheel (cuDNN and cuBLAS load some of theirs by name at run time).
    for lib in "$torch"/lib/*.so*; do
        case "$(basename "$lib")" in libtorch_python.so|libshm.so) continue ;; esac
        put "$lib" "$out.partial/lib/torch/lib"
    done
    if [ -d "$site/nvidia" ]; then
        if [ "$link" = 1 ] && cp -rl "$site/nvidia" "$out.partial/lib/" 2>/dev/null; then :; else
            rm -rf "$out.partial/lib/nvidia"
            cp -r "$site/nvidia" "$out.partial/lib/"
        fi
    fi
fi

# ONNX Runtime and, for the GPU build, its execution providers beside it.
for lib in "$(dirname "$ort")"/libonnxruntime*.so*; do
    put "$lib" "$out.partial/lib/onnxruntime"
done

rm -rf "$out"
mv "$out.partial" "$out"
echo "packaged $(basename "$binary") with libtorch $(sed -n "s/^__version__ *= *['\"]\(.*\)['\"].*/\1/p" "$torch/version.py") and $(basename "$ort") in $out ($(du -sh "$out" | cut -f1))"
