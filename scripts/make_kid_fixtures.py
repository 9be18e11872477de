#!/usr/bin/env python3
"""Writes the KID parity fixtures of the evaluate crate and the values the references give.

    pip install --no-deps --target /tmp/kidrefs torch-fidelity==0.4.0 clean-fid==0.1.35
    PYTHONPATH=/tmp/kidrefs .venv/bin/python scripts/make_kid_fixtures.py evaluate/tests/fixtures

The two references are not project dependencies (only this script needs them), hence the
separate install. Both draw KID's subsets with numpy's legacy generator; the fixture records
the seeds and orders so that our implementation can draw the same subsets:
  - torch-fidelity: kid_features_to_metric(generated, reference) with RandomState(rng_seed),
    generated set first;
  - clean-fid: kernel_distance(feats1, feats2) after np.random.seed(seed), feats2 first.
Features are stored as float32 (what the Inception gives) and handed to both references as
float64, the precision our implementation computes in. Inputs are seeded, so re-running the
script reproduces the files byte for byte.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from cleanfid.fid import kernel_distance
from torch_fidelity.metric_kid import kid_features_to_metric


def features(rng, n, d, shift):
    """Inception-like: non-negative and correlated."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((n, d)) @ mix + shift
    return np.maximum(x, 0).astype(np.float32)


def main(out: Path):
    rng = np.random.default_rng(20261130)
    generated = features(rng, 600, 32, 0.1)
    reference = features(rng, 550, 32, 0.0)
    np.save(out / "kid_generated.npy", generated)
    np.save(out / "kid_reference.npy", reference)
    g64, r64 = generated.astype(np.float64), reference.astype(np.float64)

    cases = []
    for subsets, size, seed in [(10, 500, 2020), (100, 1000, 2020), (7, 64, 5)]:
        size_used = min(size, len(g64), len(r64))
        tf = kid_features_to_metric(
            torch.from_numpy(g64),
            torch.from_numpy(r64),
            kid_subsets=subsets,
            kid_subset_size=size_used,
            rng_seed=seed,
            verbose=False,
        )
        cases.append({
            "reference": "torch-fidelity 0.4.0",
            "first": "generated",
            "subsets": subsets,
            "subset_size": size,
            "seed": seed,
            "mean": tf["kernel_inception_distance_mean"],
            "std": tf["kernel_inception_distance_std"],
        })
    for subsets, size, seed in [(10, 500, 7), (3, 1000, 11)]:
        np.random.seed(seed)
        value = kernel_distance(g64, r64, num_subsets=subsets, max_subset_size=size)
        cases.append({
            "reference": "clean-fid 0.1.35",
            # kernel_distance(feats1=generated, feats2=reference) draws from feats2 first.
            "first": "reference",
            "subsets": subsets,
            "subset_size": size,
            "seed": seed,
            "mean": value,
        })
    expected = {
        "kid": cases,
        "permutation_seed_2020_n_20": np.random.RandomState(2020).permutation(20).tolist(),
        "choice_seed_7_n_5000_m_8": np.random.RandomState(7)
        .choice(5000, 8, replace=False)
        .tolist(),
    }
    (out / "kid_expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
