"""Writes the seed corpora of the fuzz targets (fuzz/corpus/TARGET/seed-*): small valid inputs
of each format, from which libFuzzer mutates. Run: .venv/bin/python scripts/make_fuzz_seeds.py"""

import io
import json
import pathlib
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def put(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def metadata() -> None:
    table = pa.table(
        {
            "URL": ["http://example.com/a.jpg", None, "ftp://x"],
            "TEXT": ["a cat", "a dog", None],
            "WIDTH": [640.0, float("nan"), 10.0],
            "HEIGHT": [480.0, 1.0, None],
            "similarity": [0.3, 0.1, 0.9],
            "AESTHETIC_SCORE": [6.0, 4.0, 5.5],
            "pwatermark": [0.1, 0.9, 0.0],
            "punsafe": [0.0, 0.0, 1.0],
        }
    )
    for codec in ["snappy", "zstd", "none"]:
        out = io.BytesIO()
        pq.write_table(table, out, compression=codec, row_group_size=2)
        put("metadata", codec, out.getvalue())


def tar() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in [
            ("000000000.jpg", b"\xff\xd8\xff\xe0jpeg"),
            ("000000000.txt", b"a cat"),
            ("000000000.json", b'{"key": "000000000"}'),
            ("000000001.png", b"\x89PNG\r\n\x1a\n"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    put("tar", "shard", out.getvalue())


def image() -> None:
    photo = Image.open(ROOT / "evaluate/tests/fixtures/chelsea_original.png").convert("RGB")
    small = photo.resize((24, 16))
    for mode, fmt, size in [(0x02, "PNG", small), (0x05, "JPEG", small), (0x83, "PNG", photo.resize((40, 8)))]:
        out = io.BytesIO()
        size.save(out, format=fmt)
        put("image", f"{fmt.lower()}-{mode:02x}", bytes([mode]) + out.getvalue())


def caption_answer() -> None:
    answers = [
        {"choices": [{"message": {"content": "A cat sits on a mat. It is red."}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 10, "completion_tokens": 9}},
        {"choices": [{"message": {"content": "Dr. Smith's cat e.g. sleeps..."}, "finish_reason": "length"}]},
        {"choices": []},
    ]
    for i, answer in enumerate(answers):
        put("caption_answer", str(i), json.dumps(answer).encode())


def config() -> None:
    put("config", "ingest", b'input = "laion/*.parquet"\nrows_per_shard = 100\nresize_mode = "keep_ratio"\n'
        b'proxy = "http://u:p@proxy:3128"\n[metadata_filter]\nmax_aspect_ratio = 2.0\n')
    put("config", "caption", b'endpoint = "http://127.0.0.1:8000/v1"\nconcurrency = 4\nretries = 3\n')


def sql_rule() -> None:
    put("sql_rule", "where", b"LICENSE IS NOT NULL AND lower(NSFW) IN ('unlikely', 'none')")
    put("sql_rule", "arith", b"WIDTH * 2 % 3 BETWEEN -1 AND abs(score) OR NOT flag")
    put("sql_rule", "like", b"URL ILIKE 'http%' AND length(URL) > 5 AND score IS NULL")


if __name__ == "__main__":
    metadata()
    tar()
    image()
    caption_answer()
    config()
    sql_rule()
    print(f"seeds written under {CORPUS}")
