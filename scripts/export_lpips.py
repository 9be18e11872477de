#!/usr/bin/env python3
"""Writes the LPIPS weights `llamagen train vq --lpips` reads: torchvision's VGG16 features and
LPIPS' linear heads, under the names of LlamaGen's `tokenizer/tokenizer_image/lpips.py` state
dict (see models/src/lpips.rs), as one safetensors file.

Both inputs come from your own machine; nothing is downloaded:

    .venv/bin/python scripts/export_lpips.py \\
        --vgg ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth \\
        --heads LLAMAGEN/tokenizer/tokenizer_image/cache/vgg.pth  lpips_vgg.safetensors

`--vgg` is torchvision's ImageNet VGG16 (`torchvision.models.vgg16(weights="IMAGENET1K_V1")`
caches it as vgg16-397923af.pth); `--heads` is LPIPS' `vgg.pth` (taming-transformers' copy,
which LlamaGen's lpips.py downloads to its cache folder, or PerceptualSimilarity's
weights/v0.1/vgg.pth: both name the heads lin0 ... lin4).

For tests, `--random [--widths 4,8,16,32,32] [--seed N]` writes seeded random weights instead
(VGG's widths by default).
"""
import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

# (slice, VGG16 `features` index) of each 3x3 convolution, as LPIPS cuts VGG into five slices.
CONVOLUTIONS = [(1, 0), (1, 2), (2, 5), (2, 7), (3, 10), (3, 12), (3, 14),
                (4, 17), (4, 19), (4, 21), (5, 24), (5, 26), (5, 28)]
VGG_WIDTHS = [64, 128, 256, 512, 512]
SHIFT = [-0.030, -0.088, -0.188]
SCALE = [0.458, 0.448, 0.450]


def scaling() -> dict:
    return {"scaling_layer.shift": torch.tensor(SHIFT).view(1, 3, 1, 1),
            "scaling_layer.scale": torch.tensor(SCALE).view(1, 3, 1, 1)}


def from_files(vgg: Path, heads: Path) -> dict:
    features = torch.load(vgg, map_location="cpu", weights_only=True)
    if "state_dict" in features:
        features = features["state_dict"]
    out = scaling()
    for s, i in CONVOLUTIONS:
        for kind in ("weight", "bias"):
            key = f"features.{i}.{kind}"
            if key not in features:
                raise SystemExit(f"{vgg}: no {key}; expected torchvision's VGG16 state dict")
            out[f"net.slice{s}.{i}.{kind}"] = features[key].float()
    lin = torch.load(heads, map_location="cpu", weights_only=True)
    for k in range(5):
        key = f"lin{k}.model.1.weight"
        if key not in lin:
            raise SystemExit(f"{heads}: no {key}; expected LPIPS' vgg.pth")
        out[key] = lin[key].float()
    return out


def random(widths: list, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = scaling()
    c_in, slice_of = 3, {}
    for s, i in CONVOLUTIONS:
        width = widths[s - 1]
        bound = (1.0 / (c_in * 9)) ** 0.5
        out[f"net.slice{s}.{i}.weight"] = (torch.rand(width, c_in, 3, 3, generator=g) * 2 - 1) * bound
        out[f"net.slice{s}.{i}.bias"] = (torch.rand(width, generator=g) * 2 - 1) * bound
        c_in = width
    for k, width in enumerate(widths):
        out[f"lin{k}.model.1.weight"] = torch.rand(1, width, 1, 1, generator=g) / width
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vgg", type=Path, help="torchvision's VGG16 weights (.pth)")
    p.add_argument("--heads", type=Path, help="LPIPS' linear heads (vgg.pth)")
    p.add_argument("--random", action="store_true", help="seeded random weights, for tests")
    p.add_argument("--widths", default=",".join(map(str, VGG_WIDTHS)), help="with --random")
    p.add_argument("--seed", type=int, default=0, help="with --random")
    p.add_argument("out", type=Path)
    args = p.parse_args()
    if args.random:
        widths = [int(w) for w in args.widths.split(",")]
        if len(widths) != 5:
            raise SystemExit("--widths takes five numbers")
        tensors = random(widths, args.seed)
    elif args.vgg and args.heads:
        tensors = from_files(args.vgg, args.heads)
    else:
        raise SystemExit("give --vgg and --heads, or --random")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(args.out)
    print(f"wrote {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    main()
