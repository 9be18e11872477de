#!/usr/bin/env python3
"""Converts a released LlamaGen checkpoint (.pt) into safetensors that `llamagen sample` loads.

    .venv/bin/python scripts/convert_llamagen.py vq_ds16_c2i.pt vq_ds16_c2i.safetensors
    .venv/bin/python scripts/convert_llamagen.py c2i_B_256.pt c2i_B_256.safetensors
    .venv/bin/python scripts/convert_llamagen.py --weights ema 0100000.pt gpt_ema.safetensors

The state dict is taken from the checkpoint's "model" entry (LlamaGen's DDP/FSDP saves), or
"ema", "module" (DeepSpeed) or "state_dict" when asked for or when "model" is absent, or the
file itself when it is a bare state dict. Tensor names are kept as LlamaGen writes them, minus
wrapper prefixes ("module.", "_orig_mod.") and run-time state that is not a weight (the KV cache,
the causal mask, RoPE tables). Dtypes are kept (fp32, bf16, fp16); the loader converts.

Checkpoints are pickles, which can run code when loaded. The script loads them with
`weights_only=True`, which refuses anything but tensors and plain containers; a checkpoint that
also pickles e.g. an argparse Namespace needs `--trust-pickle`, meaning you trust its origin.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
NOT_WEIGHTS = (".kv_cache.k_cache", ".kv_cache.v_cache", "causal_mask", "freqs_cis")


def load(path: Path, trust_pickle: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError subclasses and RuntimeErrors
        if not trust_pickle:
            sys.exit(f"{path}: cannot be loaded as weights only ({error.__class__.__name__}: "
                     f"{str(error).splitlines()[0]}); re-run with --trust-pickle if you trust "
                     "where the file comes from")
        return torch.load(path, map_location="cpu", weights_only=False)


def pick_state_dict(checkpoint, which: str):
    if not isinstance(checkpoint, dict):
        sys.exit(f"expected a dict checkpoint, found {type(checkpoint).__name__}")
    if which != "auto":
        if which not in checkpoint:
            sys.exit(f"checkpoint has no {which!r} entry (entries: {sorted(checkpoint)})")
        return checkpoint[which], which
    for key in ("model", "module", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return checkpoint[key], key
    if all(torch.is_tensor(v) for v in checkpoint.values()):
        return checkpoint, "(bare state dict)"
    sys.exit(f"no state dict found (entries: {sorted(checkpoint)}); pass --weights")


def clean(state: dict) -> tuple[dict, list]:
    out, dropped = {}, []
    for name, tensor in state.items():
        if not torch.is_tensor(tensor):
            dropped.append(name)
            continue
        for prefix in WRAPPER_PREFIXES:
            while name.startswith(prefix):
                name = name[len(prefix):]
        if any(name.endswith(suffix) or name == suffix for suffix in NOT_WEIGHTS):
            dropped.append(name)
            continue
        if name in out:
            sys.exit(f"two tensors map to {name} after removing wrapper prefixes")
        out[name] = tensor.detach().contiguous()
    return out, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--weights", default="auto", choices=["auto", "model", "ema", "module", "state_dict"])
    parser.add_argument("--trust-pickle", action="store_true")
    args = parser.parse_args()

    checkpoint = load(args.checkpoint, args.trust_pickle)
    state, source = pick_state_dict(checkpoint, args.weights)
    tensors, dropped = clean(state)
    if not tensors:
        sys.exit("the state dict holds no tensors")
    metadata = {"converted_from": args.checkpoint.name, "state_dict": source, "format": "llamagen"}
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("steps"), int):
        metadata["steps"] = str(checkpoint["steps"])
    tmp = args.output.with_name(args.output.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(args.output)
    params = sum(t.numel() for t in tensors.values())
    print(json.dumps({"output": str(args.output), "state_dict": source, "tensors": len(tensors),
                      "parameters": params, "dropped": dropped}))


if __name__ == "__main__":
    main()
