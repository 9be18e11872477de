#!/usr/bin/env python3
"""Expected views and VQ codes of `llamagen encode vq`, made by LlamaGen's own extraction code.

    git clone https://github.com/FoundationVision/LlamaGen /tmp/llamagen   # any checkout
    .venv/bin/python scripts/make_encode_fixtures.py --llamagen /tmp/llamagen encode/tests/fixtures

For two bundled photos (one square, one cut wide so the center crop has work to do) it applies
the transforms of LlamaGen's autoregressive/train/extract_codes_c2i.py: with --ten-crop,
`center_crop_arr(img, int(16 * 1.1))` then torchvision's `TenCrop(16)`; without, the center crop
and its flip (`torch.flip(x, dims=[-1])`). Each view goes through `ToTensor` + `Normalize(0.5,
0.5)` and LlamaGen's VQModel with the tiny weights of models/tests/fixtures/vq.safetensors (the
models crate's parity fixture), and `encode()`'s indices are kept as the script keeps them.
Writes expected.npz (views uint8 [V, 16, 16, 3], codes int64 [V, 64]) and the input PNGs.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16
CROP_RANGE = 1.1


def tiny_vq(vq_mod):
    """LlamaGen's VQModel in the shape of the models crate's fixture, with its weights."""
    manifest = json.loads((ROOT / "models/tests/fixtures/manifest.json").read_text())["vq"]
    mult, ch, z = manifest["ch_mult"], manifest["ch"], manifest["z_channels"]
    config = vq_mod.ModelArgs(codebook_size=manifest["codebook_size"],
                              codebook_embed_dim=manifest["codebook_embed_dim"],
                              encoder_ch_mult=mult, decoder_ch_mult=mult, z_channels=z)
    model = vq_mod.VQModel(config)
    model.encoder = vq_mod.Encoder(ch=ch, ch_mult=mult, z_channels=z, num_res_blocks=manifest["num_res_blocks"])
    model.decoder = vq_mod.Decoder(ch=ch, ch_mult=mult, z_channels=z, num_res_blocks=manifest["num_res_blocks"])
    model.load_state_dict(load_file(str(ROOT / "models/tests/fixtures/vq.safetensors")))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llamagen", required=True, type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.llamagen))
    from dataset.augmentation import center_crop_arr
    from tokenizer.tokenizer_image import vq_model as vq_mod

    args.out.mkdir(parents=True, exist_ok=True)
    photos = ROOT / "evaluate/tests/fixtures"
    inputs = {
        "chelsea_square": Image.open(photos / "chelsea_original.png").convert("RGB"),
        "coffee_wide": Image.open(photos / "coffee_original.png").convert("RGB").crop((0, 30, 160, 110)),
    }
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ten_crop = transforms.Compose([
        transforms.Lambda(lambda im: center_crop_arr(im, int(SIZE * CROP_RANGE))),
        transforms.TenCrop(SIZE),
    ])
    model = tiny_vq(vq_mod)
    expected = {}
    for name, image in inputs.items():
        image.save(args.out / f"{name}.png")
        crops = [np.asarray(c) for c in ten_crop(image)]
        center = center_crop_arr(image, SIZE)  # LlamaGen returns a PIL image
        x = to_tensor(center)[None]
        flipped = torch.flip(x, dims=[-1])
        with torch.no_grad():
            for mode, batch in (("ten_crop", torch.stack([to_tensor(Image.fromarray(c)) for c in crops])),
                                ("center_flip", torch.cat([x, flipped]))):
                _, _, (_, _, indices) = model.encode(batch)
                expected[f"{name}_{mode}_codes"] = indices.reshape(batch.shape[0], -1).numpy().astype(np.int64)
        expected[f"{name}_ten_crop_views"] = np.stack(crops).astype(np.uint8)
        expected[f"{name}_center_flip_views"] = np.stack([np.asarray(center), np.asarray(center)[:, ::-1]]).astype(np.uint8)
    np.savez(args.out / "expected.npz", **expected)
    print(f"wrote {args.out / 'expected.npz'}: " + ", ".join(f"{k} {v.shape}" for k, v in expected.items()))


if __name__ == "__main__":
    main()
