"""The Python peer of caption/benches/caption_client.rs: the official `openai` client
(AsyncOpenAI, as captioning scripts for vLLM use it) sending the same images as base64 data URLs
with the same prompt and the same number of requests in flight, against the same loopback
server. Prints one JSON line: {"requests": N, "seconds": S, "requests_per_s": R}.

.venv/bin/python scripts/bench_caption.py --endpoint URL --model NAME --images DIR \
    --requests 2000 --concurrency 64
"""

import argparse
import asyncio
import base64
import json
import pathlib
import time

from openai import AsyncOpenAI


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True, type=pathlib.Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--prompt", default="Describe this image in as much detail as possible")
    args = parser.parse_args()

    images = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))]
    client = AsyncOpenAI(base_url=args.endpoint, api_key="none", max_retries=3, timeout=120)
    gate = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> str:
        async with gate:
            data = base64.b64encode(images[i % len(images)]).decode()
            reply = await client.chat.completions.create(
                model=args.model,
                messages=[{
                    "role": "user",
                    "content": [
                        {"type": "text", "text": args.prompt},
                        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}},
                    ],
                }],
                max_tokens=512,
                temperature=0.0,
            )
            return reply.choices[0].message.content

    start = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(args.requests)))
    seconds = time.perf_counter() - start
    assert all(answers), "every request got a caption"
    print(json.dumps({"requests": args.requests, "seconds": seconds,
                      "requests_per_s": args.requests / seconds}))


if __name__ == "__main__":
    asyncio.run(main())
