"""Speculative decoding on an editing request, where the output copies most of its prompt.

Usage: .venv/bin/python benchmarks/spec_edit.py SPEC_URL PLAIN_URL [--key K] [--runs 4]
with two tokenmill servers on the same settings, one started with --spec-tokens 5. Sends the
same greedy /v1/completions request to each, alternating, and prints the median latency and
output tokens/s of each (the outputs are identical: speculation never changes them).
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

CODE = """def parse_config(path):
    with open(path) as f:
        lines = f.read().splitlines()
    config = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        config[key.strip()] = value.strip()
    return config
"""
PROMPT = f"# Original\n{CODE}\n# Same function, with the variable `config` renamed to `settings`\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec_url")
    ap.add_argument("plain_url")
    ap.add_argument("--key", default="none")
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"}
    model = httpx.get(f"{args.spec_url}/models", headers=headers).json()["data"][0]["id"]
    body = {"model": model, "prompt": PROMPT, "max_tokens": 120, "temperature": 0}
    times: dict[str, list[float]] = {"spec": [], "plain": []}
    texts: dict[str, str] = {}
    tokens = 0
    for _ in range(args.runs):
        for name, url in (("spec", args.spec_url), ("plain", args.plain_url)):
            start = time.perf_counter()
            r = httpx.post(f"{url}/completions", json=body, headers=headers, timeout=120)
            times[name].append(time.perf_counter() - start)
            r.raise_for_status()
            texts[name] = r.json()["choices"][0]["text"]
            tokens = r.json()["usage"]["completion_tokens"]
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:>5}: {tokens} tokens, median {median:.2f} s, {tokens / median:.0f} tok/s")
    print("identical outputs:", texts["spec"] == texts["plain"])


if __name__ == "__main__":
    main()
