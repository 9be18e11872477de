#!/usr/bin/env python3
"""The peer side of `cargo bench -p llamagen-cli --bench ingest_vs_img2dataset`.

    .venv/bin/python scripts/bench_ingest.py corpus DIR
        writes six real photos from scikit-image (astronaut, chelsea, coffee, rocket,
        hubble_deep_field, immunohistochemistry; 300x451 to 872x1000) as JPEG quality 90 into DIR,
        the files the loopback server serves;
    .venv/bin/python scripts/bench_ingest.py install VENV
        creates VENV and installs img2dataset from PyPI into it (kept apart from the project's
        virtualenv, whose pins img2dataset's dependencies would move).
"""
import subprocess
import sys
from pathlib import Path


def corpus(out: Path) -> None:
    import skimage.data
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for name in ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]:
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(out / f"{name}.jpg", quality=90)


def install(venv: Path) -> None:
    if not (venv / "bin" / "img2dataset").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "img2dataset==1.47.0"], check=True)


if __name__ == "__main__":
    what, path = sys.argv[1], Path(sys.argv[2])
    {"corpus": corpus, "install": install}[what](path)
