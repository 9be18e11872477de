#!/usr/bin/env python3
"""Writes how many parameters LlamaGen's own models have at the paper's sizes, as PyTorch counts
them (`sum(p.numel() for p in model.parameters())`, buffers left out): the figure its training
scripts print and the paper's tables round (GPT-B 111M, VQ-16 72M).

    git clone https://github.com/FoundationVision/LlamaGen /tmp/llamagen   # any checkout
    .venv/bin/python scripts/make_parameter_counts.py --llamagen /tmp/llamagen \
        models/tests/fixtures/parameter_counts.json

`models/tests/parameter_counts.rs` builds ours at the same sizes and compares; the leaderboard's
`params` column is the same count.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamagen", type=Path, required=True, help="a LlamaGen checkout")
    parser.add_argument("out", type=Path, help="the JSON file to write")
    args = parser.parse_args()
    sys.path.insert(0, str(args.llamagen))
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models

    try:
        revision = subprocess.run(["git", "-C", str(args.llamagen), "rev-parse", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        revision = "unknown (not a git checkout)"
    count = lambda model: sum(p.numel() for p in model.parameters())
    gpt = {}
    # train_c2i.py's and train_t2i.py's settings: 16384 codes, 16 x 16 tokens, 1000 classes,
    # a 120-token caption prefix for text.
    for name in ["GPT-B", "GPT-L"]:
        for task, prefix in [("c2i", 1), ("t2i", 120)]:
            model = GPT_models[name](vocab_size=16384, block_size=256, num_classes=1000,
                                     cls_token_num=prefix, model_type=task)
            gpt[f"{name} {task}"] = count(model)
    vq = {name: count(VQ_models[name](codebook_size=16384, codebook_embed_dim=8))
          for name in ["VQ-16", "VQ-8"]}
    args.out.write_text(json.dumps({
        "command": "scripts/make_parameter_counts.py --llamagen LLAMAGEN "
                   "models/tests/fixtures/parameter_counts.json",
        "llamagen_revision": revision,
        "torch": torch.__version__,
        "gpt": gpt,
        "vq": vq,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
