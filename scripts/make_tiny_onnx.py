#!/usr/bin/env python3
"""Writes the tiny ONNX model that the native-stack test runs through ort.

    .venv/bin/python scripts/make_tiny_onnx.py native/tests/fixtures

Outputs `tiny_mlp.onnx` (Gemm -> Relu -> Gemm -> Softmax, seeded random weights) and
`tiny_mlp.json` with an input batch and the output numpy computes for it, so the Rust test
checks ort's numbers against an independent implementation. The IR version is pinned to one
that ONNX Runtime 1.31 accepts (newer `onnx` packages default to IR 14, which it refuses).
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 17


def main(out_dir: Path) -> None:
    rng = np.random.default_rng(20261122)
    w1 = rng.standard_normal((4, 8)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    b2 = rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((5, 4)).astype(np.float32)

    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="llamagen-rs")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)

    logits = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out_dir / "tiny_mlp.onnx")
    (out_dir / "tiny_mlp.json").write_text(
        json.dumps({"input": x.tolist(), "expected": probs.astype(np.float64).tolist()}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "native/tests/fixtures"))
