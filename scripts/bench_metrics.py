#!/usr/bin/env python3
"""The Python side of `cargo bench -p llamagen-evaluate`: the reference implementations, timed.

    bench_metrics.py frechet A.npy B.npy      # pytorch-fid: np.mean/np.cov + scipy sqrtm
    bench_metrics.py quality ROUNDS DIR NAME.. # scikit-image PSNR + SSIM on image pairs
    bench_metrics.py inception SEED IMAGES.npy # pytorch-fid's InceptionV3 (random weights)
    bench_metrics.py kid GENERATED.npy REFERENCE.npy # torch-fidelity 0.4.0's KID loop
    bench_metrics.py t2i IMAGES.npy RES        # LlamaGen's t2i views: crop, LANCZOS, clean-fid

Prints one JSON object on stdout.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np


def frechet(a_path: str, b_path: str) -> dict:
    from scipy import linalg

    a, b = np.load(a_path), np.load(b_path)
    t0 = time.perf_counter()
    mu1, s1 = np.mean(a, axis=0), np.cov(a, rowvar=False)
    mu2, s2 = np.mean(b, axis=0), np.cov(b, rowvar=False)
    t1 = time.perf_counter()
    # pytorch_fid.fid_score.calculate_frechet_distance, step by step; the best of three runs,
    # as the Rust side takes, since this shared machine's timings of one run vary up to 2x.
    distance_s = float("inf")
    for _ in range(3):
        t2 = time.perf_counter()
        diff = mu1 - mu2
        covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        fid = float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
        distance_s = min(distance_s, time.perf_counter() - t2)
    return {"fid": fid, "stats_s": t1 - t0, "distance_s": distance_s}


def kid(generated_path: str, reference_path: str) -> dict:
    """torch-fidelity's kid_features_to_metric with its defaults (100 subsets of 1000,
    RandomState(2020), generated set first), on float64 features; torch-fidelity itself when it
    is importable, else the same loop written out."""
    generated = np.load(generated_path).astype(np.float64)
    reference = np.load(reference_path).astype(np.float64)
    t0 = time.perf_counter()
    try:
        import torch
        from torch_fidelity.metric_kid import kid_features_to_metric

        out = kid_features_to_metric(
            torch.from_numpy(generated), torch.from_numpy(reference), verbose=False
        )
        mean, std = out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]
        implementation = "torch-fidelity 0.4.0"
    except ImportError:
        rng = np.random.RandomState(2020)
        d = generated.shape[1]
        m = 1000
        mmds = []
        for _ in range(100):
            x = generated[rng.choice(len(generated), m, replace=False)]
            y = reference[rng.choice(len(reference), m, replace=False)]
            kxx, kyy, kxy = ((u @ v.T / d + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))
            off = lambda k: k.sum() - np.trace(k)
            mmds.append((off(kxx) + off(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / (m * m))
        mean, std = float(np.mean(mmds)), float(np.std(mmds))
        implementation = "torch-fidelity 0.4.0's loop (numpy)"
    return {
        "kid": mean,
        "kid_std": std,
        "seconds": time.perf_counter() - t0,
        "implementation": implementation,
    }


def t2i_views(images_path: str, res: int) -> dict:
    """The views LlamaGen's evaluations/t2i makes of each image before the networks: its
    resize_and_center_crop, clean-fid's "clean" resize to 299 and its CLIP preprocessing
    (clean-fid 0.1.35's own functions when importable, else the same Pillow calls)."""
    from PIL import Image
    import torchvision.transforms as T

    try:
        import types
        sys.modules.setdefault("clip", types.ModuleType("clip"))
        from cleanfid.clip_features import img_preprocess_clip
        from cleanfid.resize import make_resizer
        clean = make_resizer("PIL", False, "bicubic", (299, 299))
        implementation = "clean-fid 0.1.35"
    except ImportError:
        def clean(x):
            planes = [np.asarray(Image.fromarray(x[:, :, c].astype(np.float32), mode="F")
                                 .resize((299, 299), Image.BICUBIC)).clip(0, 255) for c in range(3)]
            return np.stack(planes, axis=2).astype(np.float32)

        def img_preprocess_clip(x):
            t = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
            return np.asarray(t(Image.fromarray(x))).astype(np.uint8)
        implementation = "Pillow (clean-fid's calls)"
    images = np.load(images_path)
    t0 = time.perf_counter()
    checksum = 0.0
    for x in images:
        im = Image.fromarray(x)
        im = T.functional.center_crop(im, min(im.size)).resize((res, res), Image.LANCZOS)
        view = np.array(im)
        checksum += float(clean(view).sum(dtype=np.float64)) + float(img_preprocess_clip(view).sum())
    return {"seconds": time.perf_counter() - t0, "checksum": checksum,
            "implementation": implementation}


def quality(rounds: int, folder: str, names: list) -> dict:
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pairs = []
    for name in names:
        gt = np.asarray(Image.open(Path(folder) / f"{name}_original.png").convert("RGB"))
        rs = np.asarray(Image.open(Path(folder) / f"{name}_restored.png").convert("RGB"))
        pairs.append((gt.astype(np.float64) / 255.0, rs.astype(np.float64) / 255.0))
    t0 = time.perf_counter()
    total = 0.0
    for _ in range(rounds):
        for gt, rs in pairs:
            total += peak_signal_noise_ratio(rs, gt)
            total += structural_similarity(rs, gt, data_range=2.0, channel_axis=-1)
    elapsed = time.perf_counter() - t0
    return {"images": rounds * len(pairs), "seconds": elapsed, "checksum": total}


def inception(seed: int, images_path: str, batch_size: int = 32) -> dict:
    import torch
    import torch.nn as nn
    from pytorch_fid import inception as fid

    sys.path.insert(0, str(Path(__file__).parent))
    from export_inception import _pytorch_fid_blocks, build_network, no_download

    net = build_network(None, seed)
    with no_download():
        model = fid.InceptionV3([3], resize_input=True, normalize_input=True)
    model.blocks = nn.ModuleList(_pytorch_fid_blocks(net))
    model.eval()
    images = np.load(images_path)
    t0 = time.perf_counter()
    checksum = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            # As pytorch-fid's ImagePathDataset + ToTensor: uint8 HWC -> float CHW in [0, 1].
            batch = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float() / 255.0
            checksum += float(model(batch)[0].sum())
    elapsed = time.perf_counter() - t0
    return {"images": len(images), "seconds": elapsed, "checksum": checksum, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    if sys.argv[1] == "frechet":
        print(json.dumps(frechet(sys.argv[2], sys.argv[3])))
    elif sys.argv[1] == "kid":
        print(json.dumps(kid(sys.argv[2], sys.argv[3])))
    elif sys.argv[1] == "inception":
        print(json.dumps(inception(int(sys.argv[2]), sys.argv[3])))
    elif sys.argv[1] == "t2i":
        print(json.dumps(t2i_views(sys.argv[2], int(sys.argv[3]))))
    elif sys.argv[1] == "quality":
        print(json.dumps(quality(int(sys.argv[2]), sys.argv[3], sys.argv[4:])))
    else:
        sys.exit(f"unknown benchmark {sys.argv[1]!r}")
