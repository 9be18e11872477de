#!/usr/bin/env bash
# The tests and benchmarks that need an NVIDIA GPU, for a GPU machine that has a CUDA build of
# PyTorch 2.11 but no Rust toolchain and no network: `pack` builds them on this machine into
# gpu-checks/ (ignored by git, under 64 MiB), `run` runs them on the GPU machine and writes
# every log into one folder.
#
#   scripts/gpu_checks.sh pack [LLAMAGEN_CHECKOUT]   # here; the checkout feeds the peer benches
#   scripts/gpu_checks.sh run [OUT_DIR]              # there, from the repository root
#
# `run` takes libtorch from the GPU machine's own torch (LD_LIBRARY_PATH, which comes before the
# binaries' build-tree rpath) and its python for the peers (LlamaGen's code and the safetensors
# package travel in gpu-checks/). What it runs, each bounded by a timeout, in order of value:
#   1. the GPU cases of `llamagen-models --test cuda_graph --test sampling` (a graph replays;
#      graph, fixed-shape and eager decoding sample the same tokens) and of
#      `llamagen-distributed --test nccl` (a group of one reduces CUDA buckets during the
#      backward pass);
#   2. `sampling_vs_llamagen --device cuda` at 384 px: the paper's Table 7 setting, eager and
#      CUDA graph rows beside LlamaGen, fp32 and bf16 (bf16 also times a pass of speculative
#      Jacobi decoding), then GPT-L and GPT-XL in bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
dir=gpu-checks

pack() {
    local llamagen=${1:-/tmp/llamagen-git}
    rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/pylib"
    local built
    built=$(
        {
            cargo test --no-run --message-format=json -p llamagen-models --test cuda_graph --test sampling
            cargo test --no-run --message-format=json -p llamagen-distributed --test nccl
            cargo bench --no-run --message-format=json -p llamagen-models --bench sampling_vs_llamagen
        } | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
    )
    for exe in $built; do
        # The name without cargo's hash: bin/cuda_graph, bin/sampling_vs_llamagen, ...
        strip -o "$dir/bin/$(basename "$exe" | sed 's/-[0-9a-f]*$//')" "$exe"
    done
    # The binaries find fixtures and scripts under the folder they were built in.
    pwd > "$dir/built_in"
    if [ -d "$llamagen/autoregressive" ]; then
        mkdir -p "$dir/llamagen"
        cp -r "$llamagen/autoregressive" "$llamagen/tokenizer" "$dir/llamagen/"
        find "$dir/llamagen" -name '__pycache__' -prune -exec rm -rf {} +
    else
        echo "no LlamaGen checkout at $llamagen: the peer rows will be missing" >&2
    fi
    cp -r .venv/lib/python3*/site-packages/safetensors "$dir/pylib/"
    du -sh "$dir"
}

run() {
    local out=${1:-${OUT:-gpu-checks/out}}
    mkdir -p "$out"
    local python
    python=$(command -v python3)
    local torch_lib
    torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LLAMAGEN_PYTHON=$python
    export PYTHONPATH=$PWD/$dir/pylib${PYTHONPATH:+:$PYTHONPATH}
    (nvidia-smi; "$python" -c 'import torch; print(torch.__version__, torch.version.cuda)') \
        > "$out/machine.txt" 2>&1 || true
    local status=0
    step() {
        local name=$1 limit=$2
        shift 2
        echo "== $name: $*" | tee -a "$out/summary.txt"
        local start=$SECONDS
        if timeout "$limit" "$@" > "$out/$name.log" 2>&1; then
            echo "   ok ($((SECONDS - start)) s)" | tee -a "$out/summary.txt"
        else
            echo "   FAILED rc=$? ($((SECONDS - start)) s): tail of $name.log" | tee -a "$out/summary.txt"
            tail -20 "$out/$name.log" | cut -c1-300 | sed 's/^/   | /' | tee -a "$out/summary.txt"
            status=1
        fi
    }
    # The binaries read fixtures and scripts under the folder they were built in.
    local built_in
    built_in=$(cat "$dir/built_in")
    if [ ! -e "$built_in" ]; then
        mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in"
    fi
    step cuda_graph 120 "$dir/bin/cuda_graph" --nocapture
    step sampling 300 "$dir/bin/sampling" --nocapture
    step nccl 120 "$dir/bin/nccl" --nocapture
    local peer=()
    [ -d "$dir/llamagen" ] && peer=(--llamagen "$PWD/$dir/llamagen")
    step table7_fp32 300 "$dir/bin/sampling_vs_llamagen" "${peer[@]}" --device cuda --sizes 384 \
        --repeat 2 --precision fp32
    step table7_bf16 300 "$dir/bin/sampling_vs_llamagen" "${peer[@]}" --device cuda --sizes 384 \
        --repeat 2 --precision bf16 --decoders eager,graph,sjd
    step larger_bf16 400 "$dir/bin/sampling_vs_llamagen" "${peer[@]}" --device cuda --sizes 384 \
        --models GPT-L,GPT-XL --precision bf16
    return $status
}

case "$mode" in
    pack) shift; pack "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 pack [LLAMAGEN_CHECKOUT] | run [OUT_DIR]" >&2; exit 2 ;;
esac
