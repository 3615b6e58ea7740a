"""Longest common token prefix, compared in C-speed slices rather than a Python loop."""

from __future__ import annotations

_CHUNK = 256


def common_prefix_len(a: list[int], b: list[int], limit: int | None = None) -> int:
    n = min(len(a), len(b))
    if limit is not None:
        n = min(n, limit)
    i = 0
    while i < n:
        j = min(i + _CHUNK, n)
        if a[i:j] == b[i:j]:
            i = j
            continue
        while a[i] == b[i]:
            i += 1
        return i
    return n
