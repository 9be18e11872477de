#!/usr/bin/env python3
"""Expected outputs of ADM's / LlamaGen's `center_crop_arr` for the evaluate crate's parity test.

    .venv/bin/python scripts/make_center_crop_fixtures.py evaluate/tests/fixtures

Inputs are the bundled 160 px photos (from skimage.data) cut to three aspect ratios; targets
cover BOX halving (zero, one and two halvings), BICUBIC down- and up-scaling, and odd sizes.
The reference is a transcription of guided_diffusion/image_datasets.py's center_crop_arr (which
LlamaGen's dataset/augmentation.py repeats) on Pillow, and of LlamaGen's random_crop_arr with its
random draws (the short side, the crop's row and column) fixed per case. Writes
center_crop_expected.npz.
"""
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

# (name, photo, row slice, column slice): a tall, a wide and a square input.
INPUTS = [
    ("astronaut_tall", "astronaut", slice(0, 160), slice(20, 140)),
    ("coffee_wide", "coffee", slice(30, 140), slice(0, 160)),
    ("chelsea_square", "chelsea", slice(0, 160), slice(0, 160)),
]
SIZES = [37, 64, 125]
# random_crop_arr draws: (size, short side, row pick, column pick); the picks are reduced modulo
# the spare rows / columns + 1, as the Rust side does.
RANDOM_CASES = [(64, 64, 0, 0), (64, 80, 7, 3), (37, 47, 1000003, 12), (125, 156, 5, 99)]


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's preprocessing: BOX halvings while the short side is >= 2x, BICUBIC to the target
    short side (Python round), centre crop."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    y = (arr.shape[0] - image_size) // 2
    x = (arr.shape[1] - image_size) // 2
    return arr[y:y + image_size, x:x + image_size]


def random_crop_arr(pil_image: Image.Image, image_size: int, short: int, pick_y: int, pick_x: int) -> np.ndarray:
    """LlamaGen's tokenizer augmentation with its draws given: BOX halvings while the short side
    is >= 2x the drawn short side, BICUBIC to it, crop at the drawn offsets."""
    while min(*pil_image.size) >= 2 * short:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = short / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    y = pick_y % (arr.shape[0] - image_size + 1)
    x = pick_x % (arr.shape[1] - image_size + 1)
    return arr[y:y + image_size, x:x + image_size]


def main() -> None:
    out = Path(sys.argv[1])
    arrays = {}
    for name, photo, rows, cols in INPUTS:
        image = np.asarray(Image.open(out / f"{photo}_original.png").convert("RGB"))[rows, cols]
        for size in SIZES:
            arrays[f"{name}_{size}"] = center_crop_arr(Image.fromarray(np.ascontiguousarray(image)), size)
        for size, short, pick_y, pick_x in RANDOM_CASES:
            arrays[f"random_{name}_{size}_{short}_{pick_y}_{pick_x}"] = random_crop_arr(
                Image.fromarray(np.ascontiguousarray(image)), size, short, pick_y, pick_x)
    np.savez(out / "center_crop_expected.npz", **arrays)
    print(f"wrote {len(arrays)} arrays with Pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
