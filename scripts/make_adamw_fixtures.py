#!/usr/bin/env python3
"""Writes the optimizer parity fixture of the models crate with `torch.optim.AdamW` itself.

    .venv/bin/python scripts/make_adamw_fixtures.py models/tests/fixtures

Four float32 parameters of the shapes a GPT has (a matrix, a vector, a 3-D tensor, a short
vector) take three AdamW steps with LlamaGen's settings (betas 0.9 / 0.95, eps 1e-8, weight
decay 0.05 on tensors of two or more dimensions and none on the others, as train_c2i.py's two
parameter groups) and a learning rate that changes every step (as a warm-up does). The
gradients of each step are seeded random tensors. It runs twice: with `fused=True` (libtorch's
fused kernel, which train_c2i.py asks for) and with `foreach=False, fused=False` (the update
operation by operation).

Files: `adamw.safetensors` with `param.NAME` (the start), `grad.STEP.NAME`, and for each of
`fused` and `plain`: `KIND.param.NAME`, `KIND.exp_avg.NAME`, `KIND.exp_avg_sq.NAME` after the
last step; `manifest.json` gains an `adamw` entry with the settings.
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPES = {"matrix": (16, 8), "bias": (8,), "kernel": (4, 4, 3), "scale": (5,)}
LRS = [1e-3, 2e-3, 3e-3]
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.05


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    start = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    grads = [{n: torch.randn(s, generator=g) * 0.1 for n, s in SHAPES.items()} for _ in LRS]
    tensors = {f"param.{n}": t for n, t in start.items()}
    for step, gs in enumerate(grads):
        tensors.update({f"grad.{step}.{n}": t for n, t in gs.items()})
    for kind, options in [("fused", dict(fused=True)), ("plain", dict(foreach=False, fused=False))]:
        params = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
        groups = [
            {"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=LRS[0], betas=BETAS, eps=EPS, **options)
        for lr, gs in zip(LRS, grads):
            for group in opt.param_groups:
                group["lr"] = lr
            for n, p in params.items():
                p.grad = gs[n].clone()
            opt.step()
        for n, p in params.items():
            state = opt.state[p]
            tensors[f"{kind}.param.{n}"] = p.detach().clone()
            tensors[f"{kind}.exp_avg.{n}"] = state["exp_avg"].clone()
            tensors[f"{kind}.exp_avg_sq.{n}"] = state["exp_avg_sq"].clone()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / "adamw.safetensors"))
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["adamw"] = {
        "command": "scripts/make_adamw_fixtures.py models/tests/fixtures",
        "torch": torch.__version__, "lrs": LRS, "betas": list(BETAS), "eps": EPS,
        "weight_decay": WEIGHT_DECAY, "shapes": {n: list(s) for n, s in SHAPES.items()},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
