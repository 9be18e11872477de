#!/usr/bin/env python3
"""The peer side of `cargo bench -p llamagen-encode --bench encode_vs_llamagen`: the loop of
LlamaGen's autoregressive/train/extract_codes_c2i.py (ImageFolder, its transforms, a DataLoader
of batch size 1 as the script sets it, VQModel.encode, one np.save per image for codes and
labels) on the CPU, with the weights the benchmark made. Prints the seconds it took.

    .venv/bin/python scripts/bench_encode.py --llamagen /tmp/llamagen --weights VQ.safetensors \
        --input IMAGEFOLDER --out CODES [--ten-crop] [--image-size 256]
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llamagen", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--ten-crop", action="store_true")
    parser.add_argument("--crop-range", type=float, default=1.1)
    parser.add_argument("--num-workers", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(args.llamagen))
    from dataset.augmentation import center_crop_arr
    from tokenizer.tokenizer_image.vq_model import VQ_16

    torch.set_grad_enabled(False)
    model = VQ_16(codebook_size=16384, codebook_embed_dim=8)
    model.load_state_dict(load_file(str(args.weights)), strict=True)
    model.eval()
    if args.ten_crop:
        crop_size = int(args.image_size * args.crop_range)
        transform = transforms.Compose([
            transforms.Lambda(lambda im: center_crop_arr(im, crop_size)),
            transforms.TenCrop(args.image_size),
            transforms.Lambda(lambda crops: torch.stack([transforms.ToTensor()(c) for c in crops])),
            transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3, inplace=True),
        ])
    else:
        transform = transforms.Compose([
            transforms.Lambda(lambda im: center_crop_arr(im, args.image_size)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3, inplace=True),
        ])
    loader = DataLoader(ImageFolder(str(args.input), transform=transform), batch_size=1,
                        shuffle=False, num_workers=args.num_workers)
    (args.out / "codes").mkdir(parents=True, exist_ok=True)
    (args.out / "labels").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if args.ten_crop:
            x_all, num_aug = x.flatten(0, 1), 10
        else:
            x_all, num_aug = torch.cat([x, torch.flip(x, dims=[-1])]), 2
        _, _, [_, _, indices] = model.encode(x_all)
        np.save(os.path.join(args.out, "codes", f"{i}.npy"), indices.reshape(x.shape[0], num_aug, -1).numpy())
        np.save(os.path.join(args.out, "labels", f"{i}.npy"), y.numpy())
    print(f"{time.perf_counter() - start:.4f}")


if __name__ == "__main__":
    main()
