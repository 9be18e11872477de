#!/usr/bin/env python3
"""Writes the parity fixtures of the models crate by running LlamaGen's own PyTorch code.

    git clone https://github.com/FoundationVision/LlamaGen /tmp/llamagen   # any checkout
    .venv/bin/python scripts/make_model_fixtures.py --llamagen /tmp/llamagen models/tests/fixtures

Tiny models are built with LlamaGen's classes (autoregressive/models/gpt.py,
tokenizer/tokenizer_image/vq_model.py), given seeded random weights (every tensor, so that no
layer is an identity or zero), and run on fixed inputs. The script writes, per model, the
weights (`NAME.safetensors`, the reference's state-dict names) and what LlamaGen computed from
them (`NAME_expected.safetensors`), plus `manifest.json` with the configs and provenance. Weights are rounded to float16 values and stored as float16 (exact). Only
the fixture data is committed; LlamaGen's code is read from the checkout at run time.

What is recorded:
  - GPT (class- and text-conditional, and one with grouped KV heads): teacher-forced logits in
    eval mode, the training loss (train mode with dropouts off), logits step by step through
    LlamaGen's KV cache (prefill + one token at a time, with the caption padding mask for t2i),
    and the codes of LlamaGen's `generate` with top-k 1 (greedy, so independent of the RNG) under
    classifier-free guidance, with and without a guidance interval.
  - VQ: codes, the quantized latents, the reconstruction and decode_code's output on two real
    photos (skimage.data), and the training-mode losses and codebook usage.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata


def randomize(module: torch.nn.Module, seed: int, std: float = 0.1) -> None:
    """Every parameter and float buffer gets seeded noise (norm scales around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point() or "codebook_used" in name:
                continue
            noise = torch.randn(t.shape, generator=g) * std
            if name.endswith("weight") and t.dim() == 1:  # RMSNorm / GroupNorm scales
                t.copy_(1.0 + noise)
            else:
                t.copy_(noise)
            # Values on the float16 grid, so the committed weights can be stored in half the
            # space and still be exactly what LlamaGen computed with.
            t.copy_(t.half().float())


def state_dict(module: torch.nn.Module) -> dict:
    """The state dict as saved: float tensors in float16 (exact, see `randomize`)."""
    out = {}
    for k, v in module.state_dict().items():
        if "kv_cache" in k:
            continue
        v = v.detach().contiguous().clone()
        if v.is_floating_point() and "codebook_used" not in k:
            assert torch.equal(v.half().float(), v), k
            v = v.half()
        out[k] = v
    return out


def teacher_forced_steps(model, cond, tokens, emb_masks=None):
    """Logits of LlamaGen's cached path: prefill the prefix, then feed `tokens` one at a time.
    The mask setup is the one in autoregressive/models/generate.py."""
    b, n = tokens.shape
    t = model.cls_token_num
    model.setup_caches(max_batch_size=b, max_seq_length=t + n, dtype=torch.float32)
    if emb_masks is not None:
        model.causal_mask[:, :, :t] = model.causal_mask[:, :, :t] * emb_masks.unsqueeze(1)
        eye = torch.eye(model.causal_mask.size(1), model.causal_mask.size(2))
        model.causal_mask[:] = model.causal_mask * (1 - eye) + eye
    logits, _ = model(None, cond, input_pos=torch.arange(0, t))
    steps = [logits[:, -1:]]
    for i in range(n - 1):
        logits, _ = model(tokens[:, i:i + 1], cond_idx=None, input_pos=torch.tensor([t + i], dtype=torch.int))
        steps.append(logits)
    return torch.cat(steps, dim=1)


def gpt_fixture(gpt_mod, gen_mod, name, args_kw, cond, null_cond_rows, seed, out, manifest,
                emb_masks=None, with_cache=True, valid=None):
    torch.manual_seed(seed)
    config = gpt_mod.ModelArgs(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
                               attn_dropout_p=0.0, **args_kw)
    model = gpt_mod.Transformer(config)
    randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    b = cond.shape[0]
    tokens = torch.randint(0, config.vocab_size, (b, config.block_size), generator=g)
    expected = {"cond": cond.contiguous(), "tokens": tokens}

    with torch.no_grad():
        model.eval()
        t = model.cls_token_num
        logits, _ = model(tokens[:, :-1], cond, input_pos=torch.arange(t + config.block_size - 1))
        expected["eval_logits"] = logits.contiguous()

        # Training mode with every dropout off; the condition dropout is switched off too, so the
        # loss is deterministic (null conditions are given explicitly in `cond`).
        model.train()
        for attribute in ("dropout_prob", "uncond_prob"):
            if hasattr(model.cls_embedding, attribute):
                setattr(model.cls_embedding, attribute, 0.0)
        train_logits, loss = model(tokens[:, :-1], cond, targets=tokens, valid=valid)
        expected["train_logits"] = train_logits.contiguous()
        expected["train_loss"] = loss.reshape(1)
        if valid is not None:
            expected["valid"] = valid
        model.eval()

        if with_cache:
            expected["step_logits"] = teacher_forced_steps(model, cond, tokens, emb_masks).contiguous()
            if emb_masks is not None:
                expected["emb_masks"] = emb_masks.to(torch.uint8)
            guided = cond[:null_cond_rows]
            masks = emb_masks[:null_cond_rows] if emb_masks is not None else None
            for key, interval in (("greedy_cfg", -1), ("greedy_cfg_interval", 5)):
                codes = gen_mod.generate(model, guided, config.block_size, masks, cfg_scale=4.0,
                                         cfg_interval=interval, temperature=1.0, top_k=1,
                                         top_p=1.0, sample_logits=True)
                expected[key] = codes.to(torch.int64).contiguous()

    save_file(state_dict(model), str(out / f"{name}.safetensors"))
    save_file(expected, str(out / f"{name}_expected.safetensors"))
    manifest[name] = {k: getattr(config, k) for k in (
        "dim", "n_layer", "n_head", "n_kv_head", "multiple_of", "ffn_dim_multiplier", "rope_base",
        "norm_eps", "num_classes", "caption_dim", "class_dropout_prob", "model_type",
        "vocab_size", "cls_token_num", "block_size")}
    manifest[name]["guidance"] = {"cfg_scale": 4.0, "top_k": 1, "interval_key": {"greedy_cfg": -1, "greedy_cfg_interval": 5}}


def photos(size: int) -> torch.Tensor:
    """Two real photos, centre-cropped square and resized, normalised as LlamaGen's loaders."""
    images = []
    for img in (skdata.astronaut(), skdata.coffee()):
        h, w, _ = img.shape
        s = min(h, w)
        crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        small = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
        images.append(small)
    u8 = torch.from_numpy(np.stack(images))
    return u8, ((u8.permute(0, 3, 1, 2).float() / 255.0) - 0.5) / 0.5


def vq_fixture(vq_mod, out, manifest, seed=7):
    torch.manual_seed(seed)
    ch, mult, z = 32, [1, 2], 32
    config = vq_mod.ModelArgs(codebook_size=32, codebook_embed_dim=8, encoder_ch_mult=mult,
                              decoder_ch_mult=mult, z_channels=z, entropy_loss_ratio=0.1)
    model = vq_mod.VQModel(config)
    # LlamaGen fixes the base width at 128 inside VQModel; its Encoder/Decoder take `ch`, which a
    # tiny fixture needs to stay small.
    model.encoder = vq_mod.Encoder(ch=ch, ch_mult=mult, z_channels=z, num_res_blocks=1)
    model.decoder = vq_mod.Decoder(ch=ch, ch_mult=mult, z_channels=z, num_res_blocks=1)
    randomize(model, seed, std=0.05)
    u8, x = photos(16)
    expected = {"images_u8": u8.contiguous(), "images": x.contiguous()}
    with torch.no_grad():
        model.eval()
        quant, _, (_, _, codes) = model.encode(x)
        expected["codes"] = codes.reshape(2, 8, 8).to(torch.int64)
        expected["quant"] = quant.contiguous()
        expected["recon"] = model.decode(quant).contiguous()
        expected["decoded_codes"] = model.decode_code(codes, (2, 8, 8, 8)).contiguous()
        weights = state_dict(model)
        model.train()
        _, (vq_loss, commit_loss, entropy_loss, usage), _ = model.encode(x)
        expected["train_losses"] = torch.tensor([vq_loss.item(), commit_loss.item(), entropy_loss.item(), usage], dtype=torch.float64)
    save_file(weights, str(out / "vq.safetensors"))
    save_file(expected, str(out / "vq_expected.safetensors"))
    manifest["vq"] = {"codebook_size": 32, "codebook_embed_dim": 8, "ch": ch, "ch_mult": mult,
                      "z_channels": z, "num_res_blocks": 1, "entropy_loss_ratio": 0.1, "image_size": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llamagen", required=True, type=Path, help="a LlamaGen checkout")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.llamagen))
    from autoregressive.models import generate as gen_mod, gpt as gpt_mod
    from tokenizer.tokenizer_image import vq_model as vq_mod

    args.out.mkdir(parents=True, exist_ok=True)
    try:
        revision = subprocess.run(["git", "-C", str(args.llamagen), "rev-parse", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        revision = "unknown (not a git checkout)"
    manifest = {"llamagen_revision": revision, "torch": torch.__version__,
                "command": "scripts/make_model_fixtures.py --llamagen LLAMAGEN models/tests/fixtures"}
    torch.set_num_threads(1)

    tiny = dict(dim=64, n_layer=2, n_head=4, vocab_size=64, block_size=16)
    # Class ids 3 and 7, and the null class (10) in the last row.
    gpt_fixture(gpt_mod, gen_mod, "gpt_c2i", dict(tiny, num_classes=10, model_type="c2i", cls_token_num=1),
                torch.tensor([3, 7, 10]), 2, 11, args.out, manifest)
    gpt_fixture(gpt_mod, gen_mod, "gpt_c2i_gqa", dict(tiny, n_kv_head=2, num_classes=10, model_type="c2i", cls_token_num=1),
                torch.tensor([1, 9]), 2, 12, args.out, manifest, with_cache=False)

    # Text: 120 caption rows of 16 features, left-padded as LlamaGen's t2i sampler pads them
    # (valid tokens at the end, padded rows zeroed).
    g = torch.Generator().manual_seed(13)
    caption = torch.randn(2, 120, 16, generator=g)
    valid_len = torch.tensor([7, 30])
    emb_masks = (torch.arange(120)[None, :] >= (120 - valid_len)[:, None]).float()
    caption = caption * emb_masks[:, :, None]
    gpt_fixture(gpt_mod, gen_mod, "gpt_t2i", dict(tiny, caption_dim=16, model_type="t2i", cls_token_num=120),
                caption, 2, 14, args.out, manifest, emb_masks=emb_masks, valid=torch.tensor([1.0, 0.0]))

    vq_fixture(vq_mod, args.out, manifest)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote fixtures to {args.out}")


if __name__ == "__main__":
    main()
