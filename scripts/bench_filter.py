"""The Python peer of filter/benches/scorers_vs_python.rs: the reference pipeline on the same
ONNX models with onnxruntime. Pillow decodes, open_clip's eval transform and LAION's watermark
transform preprocess, open_clip.tokenize tokenizes, and the four sessions score, in batches.
Prints one JSON line: {"images": N, "seconds": S, "images_per_s": R}.

.venv/bin/python scripts/bench_filter.py --models DIR --images DIR --count 64 --batch 32
"""

import argparse
import io
import json
import pathlib
import time

import numpy as np
import onnxruntime as ort
import open_clip
import torch
from PIL import Image
from torchvision import transforms as T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, type=pathlib.Path)
    ap.add_argument("--images", required=True, type=pathlib.Path)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    spec = json.loads((args.models / "filter_models.json").read_text())
    clip_t = open_clip.image_transform(spec["clip_image_size"], is_train=False,
                                       mean=spec["clip_mean"], std=spec["clip_std"])
    wm_t = T.Compose([T.Resize((256, 256)), T.ToTensor(),
                      T.Normalize(spec["watermark_mean"], spec["watermark_std"])])
    session = lambda name: ort.InferenceSession(str(args.models / name))
    clip_image, clip_text = session("clip_image.onnx"), session("clip_text.onnx")
    aesthetic, watermark = session("aesthetic.onnx"), session("watermark.onnx")
    files = sorted(args.images.glob("*.png"))
    data = [f.read_bytes() for f in files]
    captions = [f"a photo number {i} of {files[i % len(files)].stem}" for i in range(args.count)]

    start = time.perf_counter()
    done = 0
    for lo in range(0, args.count, args.batch):
        idx = range(lo, min(lo + args.batch, args.count))
        images = [Image.open(io.BytesIO(data[i % len(data)])).convert("RGB") for i in idx]
        pixels = torch.stack([clip_t(im) for im in images]).numpy()
        marks = torch.stack([wm_t(im) for im in images]).numpy()
        tokens = open_clip.tokenize([captions[i] for i in idx]).numpy().astype(np.int64)
        img = clip_image.run(None, {"pixel_values": pixels})[0]
        txt = clip_text.run(None, {"input_ids": tokens})[0]
        unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
        sim = (unit(img) * unit(txt)).sum(-1)
        aes = aesthetic.run(None, {"image_embeds": img})[0]
        wm = watermark.run(None, {"pixel_values": marks})[0]
        assert len(sim) == len(aes) == len(wm) == len(images)
        done += len(images)
    seconds = time.perf_counter() - start
    print(json.dumps({"images": done, "seconds": seconds, "images_per_s": done / seconds}))


if __name__ == "__main__":
    main()
