#!/usr/bin/env python3
"""The peer side of `cargo bench -p llamagen-ingest --bench funnel_vs_polars`.

    python3 scripts/bench_funnel.py install VENV
        creates VENV and installs polars 2.1.0 from PyPI into it;
    VENV/bin/python scripts/bench_funnel.py run OUT.parquet FILE...
        the metadata funnel with the default rules as one polars lazy query over FILE...:
        each row's first failed rule, the rows that pass every rule with each URL's first
        occurrence kept, in input order, written to OUT.parquet; prints the funnel, and the
        process's CPU seconds (getrusage) and peak resident MiB (VmHWM, which unlike ru_maxrss
        does not carry the forking parent's peak across exec), as JSON.

The rules are ours (docs/ingest.md) written as polars expressions: NaN and null fail a score
rule, unknown sizes pass the size rules, URL validity is `^https?://` followed by a host
(our rule parses the URL as a browser does; on the benchmark's corpus the two agree).
"""
import json
import resource
import subprocess
import sys
from pathlib import Path


def install(venv: Path) -> None:
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "polars==2.1.0"], check=True)


def run(out: str, files: list) -> None:
    import polars as pl

    def score(name, op, threshold):
        c = pl.col(name).cast(pl.Float64)
        ok = (c >= threshold) if op == ">=" else (c < threshold)
        # polars orders NaN above every number; the rule fails it, as it fails null.
        return (ok & c.is_not_nan()).fill_null(False)

    w, h = pl.col("WIDTH").cast(pl.Float64), pl.col("HEIGHT").cast(pl.Float64)
    unknown = w.is_null() | h.is_null() | w.is_nan() | h.is_nan()
    rules = [
        ("valid_url", pl.col("URL").str.strip_chars().str.contains(r"(?i)^https?://[^/?#\s]+").fill_null(False)),
        ("min_aesthetic", score("AESTHETIC_SCORE", ">=", 5.0)),
        ("max_watermark", score("pwatermark", "<", 0.5)),
        ("max_unsafe", score("punsafe", "<", 0.5)),
        ("min_clip_similarity", score("similarity", ">=", 0.28)),
        ("min_size", (unknown | ((w >= 256) & (h >= 256))).fill_null(True)),
        ("max_aspect_ratio", (unknown | ((w > 0) & (h > 0) & (pl.max_horizontal(w, h) / pl.min_horizontal(w, h) <= 2.0))).fill_null(True)),
    ]
    failed = pl.lit(None, dtype=pl.String)
    for name, passes in reversed(rules):
        failed = pl.when(~passes).then(pl.lit(name)).otherwise(failed)
    lf = pl.scan_parquet(files).select("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "AESTHETIC_SCORE", "pwatermark", "punsafe").with_columns(failed.alias("failed"))
    counts = lf.group_by("failed").agg(pl.len())
    kept = lf.filter(pl.col("failed").is_null()).drop("failed").unique(subset="URL", keep="first", maintain_order=True)
    counts, kept = pl.collect_all([counts, kept], engine="streaming")
    kept.write_parquet(out)
    funnel = {row["failed"]: row["len"] for row in counts.iter_rows(named=True) if row["failed"] is not None}
    candidates = sum(row["len"] for row in counts.iter_rows(named=True) if row["failed"] is None)
    funnel["dedup_url"] = candidates - kept.height
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"rows_in": int(counts["len"].sum()), "kept": kept.height, "dropped": funnel,
                      "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": hwm / 1024}))


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "install":
        install(Path(sys.argv[2]))
    else:
        run(sys.argv[2], sys.argv[3:])
