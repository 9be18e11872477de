#!/usr/bin/env bash
# The tests and benchmarks that need an NVIDIA GPU, for a GPU machine that has a CUDA build of
# PyTorch 2.11 but no Rust toolchain and no network: `pack` builds them on this machine into
# gpu-checks/ (ignored by git, under 64 MiB), `run` runs them on the GPU machine and writes
# every log into one folder.
#
#   scripts/gpu_checks.sh pack [LLAMAGEN_CHECKOUT]   # here; the checkout feeds the peer benches
#   scripts/gpu_checks.sh run [OUT_DIR] [SECONDS]    # there, from the repository root
#
# `run` takes libtorch from the GPU machine's own torch (LD_LIBRARY_PATH, which comes before the
# binaries' build-tree rpath) and its python for the peers (LlamaGen's code and the safetensors
# package travel in gpu-checks/). What it runs, each bounded by a timeout and all of it by
# SECONDS (default 520, inside a 540 s call: a step that would outlast them is cut to what is
# left, and the steps after it are listed as skipped), in order of value:
#   0. `llamagen doctor --no-db`: libtorch's CUDA half loaded by the binary itself, the devices,
#      NCCL, the CUDA-graph shim and ONNX Runtime (the release binary and ONNX Runtime 1.31's
#      CPU library travel xz-compressed: the GPU image's onnxruntime is 1.30);
#   1. the GPU cases of `llamagen-models --test cuda_graph --test sampling` (a graph replays;
#      graph, fixed-shape and eager decoding sample the same tokens) and of
#      `llamagen-distributed --test nccl` (a group of one reduces CUDA buckets during the
#      backward pass);
#   2. `sampling_vs_llamagen --device cuda` at 384 px in bf16: the paper's Table 7 setting,
#      eager and CUDA graph rows beside LlamaGen, and a pass of speculative Jacobi decoding;
#   3. training beside LlamaGen's train_c2i.py on the same GPU: GPT-B in bf16 at batch 64 and
#      256 (`training_vs_pytorch`), the NCCL group of one against no data parallelism
#      (`data_parallel_vs_pytorch`), one fused AdamW step over GPT-B (`adamw_vs_pytorch`);
#   4. Table 7 in fp32, then GPT-L and GPT-XL in bf16.
# ONNX Runtime's CUDA provider is not among them: its GPU wheel (about 280 MB) is more than a
# call carries to that machine.
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
            cargo bench --no-run --message-format=json -p llamagen-models \
                --bench sampling_vs_llamagen --bench training_vs_pytorch --bench adamw_vs_pytorch
            cargo bench --no-run --message-format=json -p llamagen-pipeline \
                --bench data_parallel_vs_pytorch
            cargo build --release --message-format=json -p llamagen-cli --bin llamagen
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
    # The two largest files travel compressed (to about a quarter of their size).
    xz -T0 -6 "$dir/bin/llamagen"
    local ort
    ort=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*)
    # Named as the wheel names it: doctor reads the version from the name.
    xz -T0 -6 -c "$ort" > "$dir/$(basename "$ort").xz"
    # The binaries find fixtures and scripts under the folder they were built in.
    pwd > "$dir/built_in"
    git describe --always --dirty > "$dir/commit"
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
    local deadline=$((SECONDS + ${2:-520}))
    mkdir -p "$out"
    local python
    python=$(command -v python3)
    local torch_lib
    torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LLAMAGEN_PYTHON=$python
    export PYTHONPATH=$PWD/$dir/pylib${PYTHONPATH:+:$PYTHONPATH}
    (echo "checks built from $(cat "$dir/commit")"; nvidia-smi
        "$python" -c 'import torch; print(torch.__version__, torch.version.cuda)') \
        > "$out/machine.txt" 2>&1 || true
    local status=0
    step() {
        local name=$1 limit=$2
        shift 2
        local left=$((deadline - SECONDS))
        if [ "$left" -lt 30 ]; then
            echo "== $name: skipped, ${left} s left" | tee -a "$out/summary.txt"
            status=1
            return
        fi
        [ "$limit" -gt "$left" ] && limit=$left
        echo "== $name (at most $limit s): $*" | tee -a "$out/summary.txt"
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
    local tools=/tmp/llamagen-gpu-tools
    mkdir -p "$tools"
    # Python's lzma rather than xz(1), which an image need not have.
    unxz_to() {
        "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$@"
    }
    # A failure here fails the doctor step, not the steps after it.
    { unxz_to "$dir/bin/llamagen.xz" "$tools/llamagen" && chmod +x "$tools/llamagen"; } || true
    local ort
    ort=$(basename "$dir"/libonnxruntime.so.*.xz .xz)
    unxz_to "$dir/$ort.xz" "$tools/$ort" || true
    # No PostgreSQL there: a DATABASE_URL says a shared server is meant, which doctor accepts.
    step doctor 60 env ORT_DYLIB_PATH="$tools/$ort" \
        DATABASE_URL=postgresql://llamagen@db.invalid/llamagen \
        "$tools/llamagen" --data-dir "$tools/data" doctor --no-db
    step cuda_graph 120 "$dir/bin/cuda_graph" --nocapture
    step sampling 300 "$dir/bin/sampling" --nocapture
    step nccl 120 "$dir/bin/nccl" --nocapture
    local peer=()
    [ -d "$dir/llamagen" ] && peer=(--llamagen "$PWD/$dir/llamagen")
    step table7_bf16 300 "$dir/bin/sampling_vs_llamagen" "${peer[@]}" --device cuda --sizes 384 \
        --repeat 2 --precision bf16 --decoders eager,graph,sjd
    step train_gpt_b_64 240 "$dir/bin/training_vs_pytorch" "${peer[@]}" --device cuda \
        --model GPT-B --batch 64 --precision bf16 --steps 20
    step train_gpt_b_256 240 "$dir/bin/training_vs_pytorch" "${peer[@]}" --device cuda \
        --model GPT-B --batch 256 --precision bf16 --steps 10
    step nccl_overhead 180 "$dir/bin/data_parallel_vs_pytorch" --device cuda --batch 32 --steps 20
    step adamw 120 "$dir/bin/adamw_vs_pytorch" --device cuda --model GPT-B --steps 20
    step table7_fp32 300 "$dir/bin/sampling_vs_llamagen" "${peer[@]}" --device cuda --sizes 384 \
        --repeat 2 --precision fp32
    step larger_bf16 400 "$dir/bin/sampling_vs_llamagen" "${peer[@]}" --device cuda --sizes 384 \
        --models GPT-L,GPT-XL --precision bf16
    return $status
}

case "$mode" in
    pack) shift; pack "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 pack [LLAMAGEN_CHECKOUT] | run [OUT_DIR]" >&2; exit 2 ;;
esac
