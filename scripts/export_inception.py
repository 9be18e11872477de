#!/usr/bin/env python3
"""Exports the FID Inception-v3 (pytorch-fid's port of the 2015 TensorFlow graph that the ADM
evaluator uses) to ONNX, with the image preprocessing inside the graph.

    # with the real weights (pt_inception-2015-12-05-6726825d.pth, from pytorch-fid's release):
    .venv/bin/python scripts/export_inception.py --weights pt_inception-2015-12-05-6726825d.pth \
        --out weights/pt_inception-2015-12-05.onnx
    # with seeded random weights (tests and benchmarks on machines without the weights):
    .venv/bin/python scripts/export_inception.py --random-weights 0 --out /tmp/inception.onnx \
        --expect /tmp/expected.npz --images a.png b.png

Graph input `images`: float32 [N, H, W, 3] levels in [0, 255] (any H, W; bytes are widened by
the caller, and clean-fid's unquantised resize to 299 goes in as it is). Inside, as
pytorch-fid: scale to [0, 1], bilinear resize to 299 x 299 (align_corners=False, no antialias;
the identity at 299), scale to [-1, 1].
Outputs:
  pool     [N, 2048]  average-pooled Mixed_7c (FID, precision/recall)
  spatial  [N, 2023]  first 7 channels of Mixed_6d's 1x1 branch, 17 x 17 x 7 in HWC order: the
                      tensor `mixed_6/conv` that the ADM evaluator slices for sFID
  logits   [N, 1008]  the classifier on `pool` (Inception Score)
With --expect, PyTorch's outputs for --images are saved for the parity test, after checking
that `pool` equals pytorch_fid.inception.InceptionV3's own output for the same input.
"""
import argparse
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from pytorch_fid import inception as fid

IR_VERSION = 10  # ONNX Runtime 1.31 reads IR <= 13; torch may write newer.


def no_download():
    """fid_inception_v3 downloads its weights; hand it nothing (ours are loaded afterwards)."""
    patch_url = mock.patch.object(fid, "load_state_dict_from_url", lambda *a, **k: {})
    patch_load = mock.patch.object(nn.Module, "load_state_dict", lambda self, *a, **k: None)

    class Both:
        def __enter__(self):
            patch_url.__enter__()
            patch_load.__enter__()

        def __exit__(self, *exc):
            patch_load.__exit__(*exc)
            patch_url.__exit__(*exc)

    return Both()


def build_network(weights, seed):
    """fid_inception_v3() with the user's weight file, or with seeded random weights."""
    torch.manual_seed(0 if seed is None else seed)
    with no_download():
        net = fid.fid_inception_v3()
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu"))
    else:
        # torch's default init shrinks activations layer after layer until the features are
        # constant; He-normal weights keep their scale, and spread batch-norm statistics make
        # every layer matter.
        g = torch.Generator().manual_seed(seed)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if isinstance(m, nn.Linear):
                m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
                m.bias.data.zero_()
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.data.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return net.eval()


class FidFeatures(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        n = self.net
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = F.max_pool2d(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
        x = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c):
            x = block(x)
        spatial = n.Mixed_6d.branch1x1(x)[:, :7].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        for block in (n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = block(x)
        pool = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return pool, spatial, n.fc(pool)


def load_images(paths):
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path, help="pytorch-fid's pt_inception-2015-12-05 .pth file")
    src.add_argument("--random-weights", type=int, metavar="SEED", help="seeded random weights instead")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--expect", type=Path, help="write PyTorch's outputs for --images here (npz)")
    ap.add_argument("--images", type=Path, nargs="*", default=[])
    args = ap.parse_args()

    net = build_network(args.weights, args.random_weights)
    model = FidFeatures(net).eval()
    example = torch.zeros(2, 64, 64, 3, dtype=torch.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".onnx.tmp")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        input_names=["images"],
        output_names=["pool", "spatial", "logits"],
        dynamic_axes={"images": {0: "batch", 1: "height", 2: "width"}, "pool": {0: "batch"},
                      "spatial": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(args.out)

    if args.expect:
        images = load_images(args.images)
        out = {}
        with torch.no_grad():
            for i, img in enumerate(images):
                batch = torch.from_numpy(img).unsqueeze(0)
                pool, spatial, logits = model(batch.float())
                # Our wrapper must be pytorch-fid's own pipeline on [0, 1] float images.
                with no_download():
                    reference = fid.InceptionV3([3], resize_input=True, normalize_input=True)
                reference.blocks = nn.ModuleList(_pytorch_fid_blocks(net))
                ref_pool = reference(batch.permute(0, 3, 1, 2).float() / 255.0)[0].flatten(1)
                assert torch.allclose(ref_pool, pool, rtol=1e-5, atol=1e-6), "wrapper differs from pytorch-fid"
                out[f"image_{i}"] = img
                out[f"pool_{i}"] = pool.numpy()
                out[f"spatial_{i}"] = spatial.numpy()
                out[f"logits_{i}"] = logits.numpy()
        np.savez(args.expect, count=np.array(len(images)), **out)


def _pytorch_fid_blocks(net):
    """The four blocks pytorch_fid.inception.InceptionV3 builds around the same network."""
    return [
        nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(3, 2)),
        nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(3, 2)),
        nn.Sequential(net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
                      net.Mixed_6d, net.Mixed_6e),
        nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1))),
    ]


if __name__ == "__main__":
    main()
