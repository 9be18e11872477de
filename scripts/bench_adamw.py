#!/usr/bin/env python3
"""The peer side of `cargo bench -p llamagen-models --bench adamw_vs_pytorch`: `torch.optim.AdamW`
stepping parameters of the given shapes, with train_c2i.py's two groups (decay 0.05 on tensors of
two or more dimensions, none on the others), betas 0.9/0.95, random gradients; one warm-up step,
then the mean over `--steps`, for `fused=True` (train_c2i.py's choice) and for torch's default
(a loop over the parameters on the CPU, `foreach` on CUDA).

    .venv/bin/python scripts/bench_adamw.py --shapes shapes.json --steps 5 [--device cuda]

Prints {"fused_ms": ..., "default_ms": ...}: milliseconds per step.
"""
import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", type=Path, required=True, help="a JSON list of tensor shapes")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = json.loads(args.shapes.read_text())
    result = {}
    for name, options in [("fused", dict(fused=True)), ("default", {})]:
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=g).to(device)) for s in shapes]
        for q in params:
            q.grad = torch.randn(q.shape, generator=g).to(device) * 1e-3
        groups = [{"params": [q for q in params if q.dim() >= 2], "weight_decay": 0.05},
                  {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), **options)
        opt.step()
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            opt.step()
        sync(device)
        result[f"{name}_ms"] = (time.perf_counter() - start) / args.steps * 1e3
        del opt, params
    print(json.dumps(result))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
