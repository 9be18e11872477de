#!/usr/bin/env python3
"""The peer side of `cargo bench -p llamagen-models --bench vq_training_vs_llamagen`: LlamaGen's
VQModel and VQLoss (tokenizer/tokenizer_image/vq_model.py, vq_loss.py, lpips.py,
discriminator_patchgan.py) trained as its vq_train.py does, one tokenizer step (Adam, betas
0.9/0.95, clip 1.0) then one discriminator step (its own Adam and clipping) per iteration, on the
weights the bench wrote (tokenizer, discriminator, LPIPS) and the same images.

    .venv/bin/python scripts/bench_vq_training.py --llamagen /tmp/llamagen --dir BENCH_DIR \
        --steps 3

BENCH_DIR holds config.json, vq.safetensors, discriminator.safetensors, lpips.safetensors and
images.bin (f32 [batch, 3, size, size]). Prints {"steps_per_second": ..., "seconds": ...} for the
timed steps (one warm-up step first).
"""
import argparse
import importlib.machinery
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--llamagen", type=Path, required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    sys.path.insert(0, str(args.llamagen))
    for name in ("requests", "tqdm"):  # lpips.py's download helpers, unused here
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.tqdm = None
            # torchvision's import walks sys.modules and wants a spec on each.
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module
    import torchvision
    from tokenizer.tokenizer_image import lpips as lpips_mod, vq_loss as loss_mod, vq_model as vq_mod
    vgg16 = torchvision.models.vgg16
    lpips_mod.models = types.SimpleNamespace(vgg16=lambda pretrained=True: vgg16(weights=None))
    lpips_mod.LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None

    if args.threads:
        torch.set_num_threads(args.threads)
    c = json.loads((args.dir / "config.json").read_text())
    v, l = c["vq"], c["loss"]
    vq = vq_mod.VQModel(vq_mod.ModelArgs(
        codebook_size=v["codebook_size"], codebook_embed_dim=v["codebook_embed_dim"],
        encoder_ch_mult=v["encoder_ch_mult"], decoder_ch_mult=v["decoder_ch_mult"],
        z_channels=v["z_channels"], commit_loss_beta=v["commit_loss_beta"],
        entropy_loss_ratio=v["entropy_loss_ratio"]))
    # VQModel fixes the base width at 128; the bench's may be narrower.
    vq.encoder = vq_mod.Encoder(ch=v["ch"], ch_mult=v["encoder_ch_mult"], z_channels=v["z_channels"],
                                num_res_blocks=v["num_res_blocks"])
    vq.decoder = vq_mod.Decoder(ch=v["ch"], ch_mult=v["decoder_ch_mult"], z_channels=v["z_channels"],
                                num_res_blocks=v["num_res_blocks"])
    vq.load_state_dict(load_file(str(args.dir / "vq.safetensors")), strict=True)
    vq.quantize.codebook_used.requires_grad_(False)
    d = l["discriminator"]
    loss = loss_mod.VQLoss(disc_start=l["disc_start"], disc_weight=l["disc_weight"],
                           disc_dim=d["channels"], disc_num_layers=d["layers"])
    loss.perceptual_loss.load_state_dict(load_file(str(args.dir / "lpips.safetensors")), strict=True)
    loss.discriminator.load_state_dict(load_file(str(args.dir / "discriminator.safetensors")), strict=True)
    device = torch.device(args.device)
    vq.to(device).train()
    loss.to(device).train()
    opt = torch.optim.Adam(vq.parameters(), lr=1e-4, betas=(0.9, 0.95))
    opt_disc = torch.optim.Adam(loss.discriminator.parameters(), lr=1e-4, betas=(0.9, 0.95))
    size = c["image_size"]
    images = torch.from_numpy(np.fromfile(args.dir / "images.bin", dtype="<f4").reshape(
        -1, 3, size, size)).to(device)
    cuda = device.type == "cuda"
    state = {"step": 0}

    def step():
        state["step"] += 1
        opt.zero_grad()
        recon, codebook_loss = vq(images)
        g = loss(codebook_loss, images, recon, optimizer_idx=0, global_step=state["step"],
                 last_layer=vq.decoder.last_layer, log_every=10**9)
        g.backward()
        torch.nn.utils.clip_grad_norm_(vq.parameters(), 1.0)
        opt.step()
        opt_disc.zero_grad()
        dl = loss(codebook_loss, images, recon, optimizer_idx=1, global_step=state["step"],
                  log_every=10**9)
        dl.backward()
        torch.nn.utils.clip_grad_norm_(loss.discriminator.parameters(), 1.0)
        opt_disc.step()

    step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({"steps_per_second": args.steps / seconds, "seconds": seconds}))


if __name__ == "__main__":
    main()
