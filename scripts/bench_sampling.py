#!/usr/bin/env python3
"""The peer side of `cargo bench -p llamagen-models --bench sampling_vs_llamagen`: LlamaGen's own
`generate` (autoregressive/models/generate.py) and VQ `decode_code` on the weights the Rust
benchmark wrote, timed the same way (wall clock around the call, CPU threads as given; on CUDA
after one untimed warm-up call, with the clock stopped after torch.cuda.synchronize()).

    .venv/bin/python scripts/bench_sampling.py --llamagen /tmp/llamagen gpt \
        --weights gpt_b.safetensors --gpt-model GPT-B --image-size 256 --classes 8 --cfg-scale 4.0
    .venv/bin/python scripts/bench_sampling.py --llamagen /tmp/llamagen vq \
        --weights vq16.safetensors --image-size 256 --images 8

Prints one JSON object: {"seconds": ..., "shape": [...]}.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llamagen", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("what", choices=["gpt", "vq"])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--gpt-model", default="GPT-B", help="a key of LlamaGen's GPT_models")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, str(args.llamagen))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    state = load_file(str(args.weights))
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def timed(run):
        if cuda:
            run()
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run()
        if cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    if args.what == "gpt":
        from autoregressive.models.generate import generate
        from autoregressive.models.gpt import GPT_models

        grid = args.image_size // 16
        model = GPT_models[args.gpt_model](block_size=grid * grid, cls_token_num=1, model_type="c2i", vocab_size=16384)
        model.load_state_dict(state, strict=True)
        # As sample_c2i.py: the model moves to the device in the sampling precision.
        model.to(device=device, dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32)
        model.eval()
        cond = torch.arange(args.classes, device=device) % 1000
        torch.manual_seed(0)
        codes, seconds = timed(lambda: generate(
            model, cond, grid * grid, cfg_scale=args.cfg_scale, cfg_interval=-1,
            temperature=1.0, top_k=0, top_p=1.0, sample_logits=True))
        shape = list(codes.shape)
    else:
        from tokenizer.tokenizer_image.vq_model import VQ_16

        model = VQ_16(codebook_size=16384, codebook_embed_dim=8)
        model.load_state_dict(state, strict=True)
        model.to(device)
        model.eval()
        grid = args.image_size // 16
        codes = torch.randint(0, 16384, (args.images * grid * grid,), generator=torch.Generator().manual_seed(0))
        codes = codes.to(device)
        images, seconds = timed(lambda: model.decode_code(codes, (args.images, 8, grid, grid)))
        shape = list(images.shape)
    print(json.dumps({"seconds": seconds, "shape": shape, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
