#!/usr/bin/env python3
"""The peer side of `cargo bench -p llamagen-models --bench training_vs_pytorch`: LlamaGen's
`Transformer` (autoregressive/models/gpt.py) trained as its train_c2i.py does (fused AdamW with
decay on >= 2-D tensors, betas 0.9/0.95, clip 1.0, dropouts on) on the same weights and batches, fp32 on
the CPU or CUDA; `--autocast-bf16` wraps the forward pass as train_c2i.py's
`--mixed-precision bf16` does.

    .venv/bin/python scripts/bench_training.py --llamagen /tmp/llamagen-git --weights w.safetensors \
        --config gpt.json --batch 8 --steps 5

Prints {"tokens_per_second": ..., "seconds": ..., "gpu_memory_mib": ...} for the timed steps (one
warm-up step first); the memory is what nvidia-smi reports for this process, as the Rust side.

Under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (Gloo on the CPU,
NCCL on CUDA), each rank trains `--batch` samples of its own, and rank 0 alone prints, with the
tokens of all ranks: the peer of `cargo bench -p llamagen-pipeline --bench data_parallel_vs_pytorch`.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.checkpoint
from safetensors.torch import load_file


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--llamagen", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--autocast-bf16", action="store_true")
    p.add_argument("--checkpoint", action="store_true",
                   help="activation checkpointing: each block under torch.utils.checkpoint")
    p.add_argument("--adamw", choices=["fused", "default"], default="fused",
                   help="fused: torch.optim.AdamW(fused=True), as train_c2i.py asks for; "
                        "default: torch's own choice (a loop on the CPU, foreach on CUDA)")
    p.add_argument("--zero", action="store_true",
                   help="under torchrun: AdamW's state sharded by ZeroRedundancyOptimizer")
    p.add_argument("--t2i-features", type=Path,
                   help="text-to-image: f32 [batch, 120, 2048] caption features (the bench's)")
    args = p.parse_args()
    sys.path.insert(0, str(args.llamagen))
    from autoregressive.models.gpt import ModelArgs, Transformer

    if args.threads:
        torch.set_num_threads(args.threads)
    c = json.loads(args.config.read_text())
    t2i = args.t2i_features is not None
    model = Transformer(ModelArgs(
        dim=c["dim"], n_layer=c["n_layer"], n_head=c["n_head"], vocab_size=c["vocab_size"],
        block_size=c["block_size"], num_classes=c["num_classes"],
        cls_token_num=c["cls_token_num"], model_type="t2i" if t2i else "c2i",
        caption_dim=c["caption_dim"], multiple_of=c["multiple_of"]))
    model.load_state_dict(load_file(str(args.weights)), strict=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", "0"))
                          if args.device == "cuda" else None)
    if args.checkpoint:
        for i, block in enumerate(model.layers):
            model.layers[i] = Checkpointed(block)
    model.to(device)
    model.train()
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    fused = dict(fused=True) if args.adamw == "fused" else {}
    if args.zero and world > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=1e-4,
                                      betas=(0.9, 0.95), **fused)
    else:
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), **fused)
    g = torch.Generator().manual_seed(rank)
    codes = torch.randint(0, c["vocab_size"], (args.batch, c["block_size"]), generator=g).to(device)
    labels = torch.randint(0, c["num_classes"], (args.batch,), generator=g).to(device)
    mask = valid = None
    if t2i:
        # dataset/t2i.py's mask for captions of 20 + 37 i mod 101 valid tokens (the bench's),
        # the valid tokens last; train_t2i.py passes mask[:, :, :-1, :-1] and valid.
        t, n = c["cls_token_num"], c["block_size"]
        labels = torch.from_numpy(np.fromfile(args.t2i_features, dtype="<f4").reshape(
            args.batch, t, c["caption_dim"])).to(device)
        masks = []
        for i in range(args.batch):
            length = 20 + (i * 37) % 101
            emb_mask = torch.zeros(t)
            emb_mask[-length:] = 1
            m = torch.tril(torch.ones(t + n, t + n))
            m[:, :t] = m[:, :t] * emb_mask.unsqueeze(0)
            eye = torch.eye(t + n, t + n)
            masks.append((m * (1 - eye) + eye).to(torch.bool))
        mask = torch.stack(masks).unsqueeze(1)[:, :, :-1, :-1].to(device)
        valid = torch.ones(args.batch, device=device)
    cuda = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast_bf16):
            _, loss = model(cond_idx=labels, idx=codes[:, :-1], targets=codes, mask=mask,
                            valid=valid)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if cuda:
        torch.cuda.synchronize()
    if world > 1:
        torch.distributed.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch * c["block_size"] * world
    if world > 1:
        torch.distributed.destroy_process_group()
        if rank != 0:
            return
    print(json.dumps({"tokens_per_second": tokens / seconds, "seconds": seconds,
                      "gpu_memory_mib": gpu_memory_mib() if cuda else None,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


class Checkpointed(torch.nn.Module):
    """A block whose activations are recomputed in the backward pass instead of kept."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, *args):
        return torch.utils.checkpoint.checkpoint(self.block, *args, use_reentrant=False)


def gpu_memory_mib():
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return int(mib)
    return None


if __name__ == "__main__":
    main()
