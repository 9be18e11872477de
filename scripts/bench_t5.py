#!/usr/bin/env python3
"""The peer side of `cargo bench -p llamagen-encode --bench t5_vs_llamagen`: the loop of
LlamaGen's language/extract_t5_feature.py on the CPU. Its T5Embedder (caption cleaning twice,
padding to 120 tokens, T5EncoderModel) embeds one caption per call, as the script's DataLoader
(batch size 1, "important!") feeds it, and each caption's valid tokens are saved as an f32 npy.
The weights are the PyTorch original of the ONNX export the Rust side runs (export_t5.py
--random-arch ... --save-pytorch). Prints the seconds it took.

    .venv/bin/python scripts/bench_t5.py --llamagen CHECKOUT --model HF_FOLDER \
        --captions CAPTIONS.json --out DIR [--precision none|bf16]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llamagen", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--captions", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precision", default="none", choices=["none", "bf16"])
    args = parser.parse_args()
    sys.path.insert(0, str(args.llamagen))
    from language.t5 import T5Embedder

    torch.set_grad_enabled(False)
    dtype = {"none": torch.float32, "bf16": torch.bfloat16}[args.precision]
    embedder = T5Embedder(device="cpu", dir_or_name=args.model.name, local_cache=True,
                          cache_dir=str(args.model.parent), torch_dtype=dtype,
                          t5_model_kwargs={"torch_dtype": dtype})
    captions = json.loads(args.captions.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i, caption in enumerate(captions):
        caption_embs, emb_masks = embedder.get_text_embeddings([caption])
        valid = caption_embs[:, :emb_masks.sum()]
        np.save(os.path.join(args.out, f"{i}.npy"), valid.to(torch.float32).numpy())
    print(f"{time.perf_counter() - started:.3f}")


if __name__ == "__main__":
    main()
