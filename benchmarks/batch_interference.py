"""Interactive time to first token alone and while a batch runs, on one server.

    tokenmill serve --port 8124 --db /tmp/bi/t.db &
    python benchmarks/batch_interference.py http://127.0.0.1:8124/v1 [--system-words 30]

Ten sequential streamed chats (8 tokens) alone, then a 48-line batch (96 tokens a line,
end-of-text banned so every line runs its length), then ten more chats once two lines have
finished; prints TTFT p50 and max of each set. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from openai import OpenAI

MODEL = "smollm2-135m-instruct"


def ttfts(c: OpenAI, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        stream = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say hi {i}"}], max_tokens=8,
            stream=True,
        )  # fmt: skip
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t
        out.append((first or 0.0) * 1000)
    return out


def completed(c: OpenAI, batch_id: str) -> int:
    counts = c.batches.retrieve(batch_id).request_counts
    return counts.completed if counts else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("--system-words", type=int, default=0, help="a longer prompt per line")
    args = ap.parse_args()
    c = OpenAI(base_url=args.base_url, api_key="k", max_retries=0)
    alone = ttfts(c, 10)
    system = [{"role": "system", "content": "You are a storyteller. " * args.system_words}]
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "max_tokens": 96, "temperature": 0, "logit_bias": {"2": -100},
                  "messages": (system if args.system_words else [])
                  + [{"role": "user", "content": f"Write a long story about {i}."}]}}
        for i in range(48)
    ]  # fmt: skip
    data = "\n".join(map(json.dumps, lines)).encode()
    f = c.files.create(file=("in.jsonl", data), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")  # fmt: skip
    while completed(c, b.id) < 2:
        time.sleep(0.2)
    during = ttfts(c, 10)
    while c.batches.retrieve(b.id).status != "completed":
        time.sleep(0.5)
    for name, xs in (("alone", alone), ("during a batch", during)):
        print(f"{name:15} TTFT p50 {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms")
    print("batch", c.batches.retrieve(b.id).request_counts)


if __name__ == "__main__":
    main()
