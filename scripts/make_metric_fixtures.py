#!/usr/bin/env python3
"""Writes the parity fixtures of the evaluate crate and the reference values they must give.

    .venv/bin/python scripts/make_metric_fixtures.py evaluate/tests/fixtures

Reference values come from the implementations users compare against:
  - FID: pytorch-fid's / the ADM evaluator's formula with np.cov and scipy.linalg.sqrtm;
  - Inception Score and precision/recall: a numpy transcription of the ADM evaluator
    (guided-diffusion/evaluations/evaluator.py), in float64 softmax / float32 distances;
  - PSNR and SSIM: scikit-image on real photos from skimage.data, "reconstructed" by a JPEG
    round trip, both in the textbook convention and in LlamaGen's reconstruction_vq_ddp.py one.
Random inputs are seeded, so re-running the script reproduces the files byte for byte.
"""
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import linalg
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid: calculate_activation_statistics + calculate_frechet_distance."""
    mu1, mu2 = np.mean(a.astype(np.float64), axis=0), np.mean(b.astype(np.float64), axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        raise ValueError("singular product; choose better-conditioned fixtures")
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score_reference(logits: np.ndarray, split_size: int) -> list:
    x = logits.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    preds = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(float(np.exp(np.mean(np.sum(kl, 1)))))
    return scores


def pairwise(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    nu = np.sum(np.square(u), 1)[:, None]
    nv = np.sum(np.square(v), 1)[None, :]
    return np.maximum(nu - 2 * u @ v.T + nv, 0.0).astype(np.float32)


def precision_recall_reference(real: np.ndarray, fake: np.ndarray, k: int = 3):
    def radii(x):
        return np.partition(pairwise(x, x), k, axis=1)[:, k]

    r_real, r_fake = radii(real), radii(fake)
    precision = np.mean(np.any(pairwise(fake, real) <= r_real[None, :], axis=1))
    recall = np.mean(np.any(pairwise(real, fake) <= r_fake[None, :], axis=1))
    return float(precision), float(recall)


def photos():
    for name in ("astronaut", "coffee", "chelsea"):
        img = getattr(skdata, name)()
        h, w = img.shape[:2]
        s = 160
        top, left = (h - s) // 2, (w - s) // 2
        yield name, np.ascontiguousarray(img[top : top + s, left : left + s, :3])


def jpeg_round_trip(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2406_06525)
    expected = {}

    # FID: two correlated Gaussian feature sets that differ in mean and covariance.
    d, n = 64, 600
    mix_a = rng.standard_normal((d, d)) / np.sqrt(d)
    mix_b = mix_a + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)
    feats_a = (rng.standard_normal((n, d)) @ mix_a + 0.5).astype(np.float32)
    feats_b = (rng.standard_normal((n, d)) @ mix_b * 1.2).astype(np.float32)
    np.save(out / "fid_features_a.npy", feats_a)
    np.save(out / "fid_features_b.npy", feats_b)
    expected["fid"] = fid_reference(feats_a, feats_b)
    expected["fid_same"] = fid_reference(feats_a, feats_a)

    # Inception Score: 500 samples, 100 classes, 10 splits of 50.
    logits = (rng.standard_normal((500, 100)) * 3.0).astype(np.float32)
    np.save(out / "is_logits.npy", logits)
    expected["inception_score_split_size"] = 50
    expected["inception_score_splits"] = inception_score_reference(logits, 50)
    expected["inception_score"] = float(np.mean(expected["inception_score_splits"]))

    # Precision/recall: generated features narrower and shifted against the real ones.
    real = rng.standard_normal((300, 32)).astype(np.float32)
    fake = (rng.standard_normal((300, 32)) + 0.3).astype(np.float32)
    np.save(out / "pr_real.npy", real)
    np.save(out / "pr_fake.npy", fake)
    expected["precision"], expected["recall"] = precision_recall_reference(real, fake)

    # PSNR/SSIM on real photos.
    expected["images"] = {}
    for name, img in photos():
        restored = jpeg_round_trip(img, quality=25)
        Image.fromarray(img).save(out / f"{name}_original.png")
        Image.fromarray(restored).save(out / f"{name}_restored.png")
        gt64, rs64 = img.astype(np.float64) / 255.0, restored.astype(np.float64) / 255.0
        gt32, rs32 = img.astype(np.float32) / 255.0, restored.astype(np.float32) / 255.0
        entry = {
            "standard_psnr": peak_signal_noise_ratio(gt64, rs64, data_range=1.0),
            "standard_ssim": structural_similarity(gt64, rs64, data_range=1.0, channel_axis=-1),
            # LlamaGen's calls, in float64.
            "llamagen_psnr": peak_signal_noise_ratio(rs64, gt64),
            "llamagen_ssim": structural_similarity(rs64, gt64, data_range=2.0, channel_axis=-1),
            # The same calls on float32 arrays, as LlamaGen runs them (for the record).
            "llamagen_psnr_f32": float(peak_signal_noise_ratio(rs32, gt32)),
            "llamagen_ssim_f32": float(structural_similarity(rs32, gt32, data_range=2.0, channel_axis=-1)),
        }
        expected["images"][name] = {k: float(v) for k, v in entry.items()}

    # FID of sets smaller than their dimension (a quick check, a small reference): both
    # covariances are singular, which scipy's sqrtm still square-roots to about 1e-8.
    d, n_a, n_b = 64, 40, 50
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    small_a = (rng.standard_normal((n_a, d)) @ mix + 0.5).astype(np.float32)
    small_b = (rng.standard_normal((n_b, d)) @ mix * 1.2).astype(np.float32)
    np.save(out / "fid_small_a.npy", small_a)
    np.save(out / "fid_small_b.npy", small_b)
    expected["fid_small"] = fid_reference(small_a, small_b)

    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "evaluate/tests/fixtures"))
