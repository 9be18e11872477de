"""Fixtures for the text-to-image protocol's parity tests (evaluate/tests/text_to_image.rs).

The references are the code LlamaGen's evaluations/t2i/evaluation.py runs:
  - Pillow's LANCZOS and float ("F" mode) resizes, torchvision's center_crop;
  - clean-fid 0.1.35's "clean" resizer (`make_resizer("PIL", False, "bicubic", size)`) and
    its CLIP-FID preprocessing (`img_preprocess_clip`);
  - LlamaGen's `compute_clip_score` on open_clip's model (the OpenAI `clip` package computes
    the same towers), with its "A photo depicts " token splice and `tensor2pil` round trip.

CLIP is the filter's tiny random-weight export (filter/tests/fixtures/models, made by
scripts/export_filter_models.py --tiny-random with seed 0): this script rebuilds the same torch
model and checks it against those ONNX files before using it as the reference.

clean-fid is not in the project's virtualenv; install it beside it without its dependencies:
  .venv/bin/pip install --no-deps --target /tmp/refpkgs clean-fid==0.1.35 requests
  PYTHONPATH=/tmp/refpkgs .venv/bin/python scripts/make_t2i_fixtures.py
"""

import argparse
import json
import pathlib
import sys

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import export_filter_models  # noqa: E402

CAPTIONS = [
    "A cat lying on a bed, looking at the camera.",
    "Two cups of coffee &amp; a saucer on a wooden table",
    "an astronaut in a white suit holding a flag " * 8,  # past 77 tokens: truncated
]


def photos(out):
    """Three small photos of odd shapes from the filter's fixtures (skimage's public ones)."""
    src = ROOT / "filter/tests/fixtures"
    shapes = [("chelsea.png", (131, 97)), ("coffee.png", (90, 120)), ("astronaut.png", (64, 64))]
    images = []
    for i, (name, (w, h)) in enumerate(shapes):
        im = Image.open(src / name).convert("RGB").resize((w, h), Image.BICUBIC)
        im.save(out / f"photo_{i}.png")
        images.append(np.asarray(Image.open(out / f"photo_{i}.png").convert("RGB")))
    return images


def eval_view(image_np, res):
    """LlamaGen's resize_and_center_crop (compute_fid's custom_image_tranform)."""
    im = Image.fromarray(image_np)
    im = T.functional.center_crop(im, min(im.size))
    return np.array(im.resize((res, res), Image.LANCZOS))


def clip_score_reference(model, tokenizer, images, captions, res):
    """LlamaGen's compute_clip_score, step for step, on open_clip's towers."""
    preprocess = open_clip.image_transform(model.visual.image_size[0], is_train=False,
                                           mean=open_clip.OPENAI_DATASET_MEAN,
                                           std=open_clip.OPENAI_DATASET_STD)
    dataset_trsf = T.Compose([lambda im: T.functional.center_crop(im, min(im.size)),
                              T.Resize(res, interpolation=T.InterpolationMode.LANCZOS),
                              T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    tensors = [dataset_trsf(Image.fromarray(im)) for im in images]
    pils = [Image.fromarray(((t + 1.0) * 127.5).clamp(0.0, 255.0).to(torch.uint8)
                            .permute(1, 2, 0).numpy()) for t in tensors]
    imgs = torch.stack([preprocess(p) for p in pils])
    tokens = tokenizer(captions)
    prepend = tokenizer(["A photo depicts "])[:, 1:4]
    new = torch.cat([tokens[:, :1], prepend.expand(tokens.shape[0], -1), tokens[:, 1:]], dim=1)[:, :77]
    last = new[:, 76:77]
    last[last > 0] = 49407
    new = torch.cat([new[:, :76], last], dim=1)
    with torch.no_grad():
        sims = F.cosine_similarity(model.encode_image(imgs), model.encode_text(new), dim=1)
    return sims.numpy(), new.numpy(), np.stack([np.asarray(p) for p in pils])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "evaluate/tests/fixtures/t2i")
    args = ap.parse_args()
    # clean-fid's CLIP module imports OpenAI's `clip` package at the top but its preprocessing
    # function uses none of it.
    import types
    sys.modules.setdefault("clip", types.ModuleType("clip"))
    from cleanfid.clip_features import img_preprocess_clip
    from cleanfid.resize import make_resizer

    args.out.mkdir(parents=True, exist_ok=True)
    images = photos(args.out)
    arrays = {}
    # Pillow's LANCZOS on bytes, down and up, and its float resize, down and up.
    for i, im in enumerate(images):
        for w, h in [(40, 48), (150, 170)]:
            arrays[f"lanczos_{i}_{w}x{h}"] = np.asarray(Image.fromarray(im).resize((w, h), Image.LANCZOS))
            plane = Image.fromarray(im[:, :, 1].astype(np.float32), mode="F")
            for name, f in [("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)]:
                arrays[f"f32_{name}_{i}_{w}x{h}"] = np.asarray(plane.resize((w, h), f))
    # The protocol's views at a small evaluation resolution (48) and clean resizes to 299 and
    # to a small side.
    res = 48
    for i, im in enumerate(images):
        view = eval_view(im, res)
        arrays[f"eval_view_{i}"] = view
        arrays[f"clean_{i}_75"] = make_resizer("PIL", False, "bicubic", (75, 75))(view)
        arrays[f"clip_fid_view_{i}"] = img_preprocess_clip(view)
    arrays["clean_0_299"] = make_resizer("PIL", False, "bicubic", (299, 299))(eval_view(images[0], res))

    # The filter's tiny CLIP, rebuilt and checked against its ONNX export.
    import onnxruntime as ort
    models = ROOT / "filter/tests/fixtures/models"
    build_args = argparse.Namespace(tiny_random=True, random_arch=None, seed=0, aesthetic_weights=None,
                                    watermark_weights=None)
    model = export_filter_models.build(build_args)[0].eval()
    probe = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    onnx_out = ort.InferenceSession(str(models / "clip_image.onnx")).run(None, {"pixel_values": probe.numpy()})[0]
    with torch.no_grad():
        torch_out = model.encode_image(probe).numpy()
    assert np.allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-5), "not the model of the ONNX fixture"
    sims, tokens, round_trip = clip_score_reference(model, open_clip.tokenize, images, CAPTIONS, res)
    with torch.no_grad():
        clip_inputs = torch.stack([torch.from_numpy(arrays[f"clip_fid_view_{i}"]).permute(2, 0, 1)
                                   for i in range(len(images))]).float()
        # clean-fid's CLIP_fx on uint8 views: /255, CLIP's normalisation, the image tower.
        norm = T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
        clip_features = model.encode_image(norm(clip_inputs / 255.0)).numpy()
    arrays.update(clip_scores=sims.astype(np.float32), clip_score_tokens=tokens.astype(np.int64),
                  clip_score_round_trip=round_trip, clip_features=clip_features)
    np.savez(args.out / "t2i_expected.npz", **arrays)  # uncompressed: ndarray-npy reads it without a deflate build
    (args.out / "captions.json").write_text(json.dumps({"captions": CAPTIONS, "eval_res": res}, indent=1) + "\n")
    print(f"wrote {len(arrays)} arrays to {args.out}; CLIP scores {sims}")


if __name__ == "__main__":
    main()
