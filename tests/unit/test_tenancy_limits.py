"""The RPM/TPM sliding window: exact admission, reservation and settlement, retry times."""

from __future__ import annotations

import threading

from tokenmill.tenancy.limits import WINDOW, Limits, RateLimiter, duration

B = ("key_a", "model")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rpm_admits_exactly_the_limit_then_frees_as_the_window_slides() -> None:
    clock = Clock()
    lim = RateLimiter(clock)
    limits = Limits(rpm=3)
    got = []
    for _ in range(5):
        got.append(lim.admit(B, limits, 10).admitted)
        clock.now += 1
    assert got == [True, True, True, False, False]
    refused = lim.admit(B, limits, 10)
    assert refused.limited_by == "requests"
    assert refused.retry_after is not None
    assert abs(refused.retry_after - (1000.0 + WINDOW - clock.now)) < 1e-9  # oldest leaves
    clock.now = 1000.0 + WINDOW  # the first request leaves the window
    assert lim.admit(B, limits, 10).admitted
    assert not lim.admit(B, limits, 10).admitted


def test_headers_report_limit_remaining_and_reset() -> None:
    clock = Clock()
    lim = RateLimiter(clock)
    d = lim.admit(B, Limits(rpm=5, tpm=100), 30)
    assert d.snapshot is not None
    h = d.snapshot.headers()
    assert h["x-ratelimit-limit-requests"] == "5"
    assert h["x-ratelimit-remaining-requests"] == "4"
    assert h["x-ratelimit-limit-tokens"] == "100"
    assert h["x-ratelimit-remaining-tokens"] == "70"
    assert h["x-ratelimit-reset-requests"] == "1m0s"
    only_rpm = lim.admit(("k2", "m"), Limits(rpm=2), 1).snapshot
    assert only_rpm is not None and "x-ratelimit-limit-tokens" not in only_rpm.headers()
    assert lim.admit(("k3", "m"), Limits(), 1).snapshot is None  # unlimited: no headers


def test_tpm_reserves_then_settles_with_the_real_count() -> None:
    clock = Clock()
    lim = RateLimiter(clock)
    limits = Limits(tpm=100)
    a = lim.admit(B, limits, 60)  # prompt + max_tokens
    assert a.admitted and a.reservation is not None
    refused = lim.admit(B, limits, 50)
    assert not refused.admitted and refused.limited_by == "tokens"
    lim.settle(a.reservation, 20)  # it used only 20
    b = lim.admit(B, limits, 50)
    assert b.admitted and b.snapshot is not None
    assert b.snapshot.headers()["x-ratelimit-remaining-tokens"] == "30"


def test_a_request_larger_than_the_tpm_limit_can_never_be_admitted() -> None:
    lim = RateLimiter(Clock())
    d = lim.admit(B, Limits(tpm=100), 101)
    assert not d.admitted and d.limited_by == "tokens" and d.retry_after is None


def test_tpm_retry_after_is_when_enough_tokens_leave() -> None:
    clock = Clock()
    lim = RateLimiter(clock)
    limits = Limits(tpm=100)
    lim.admit(B, limits, 40)
    clock.now += 10
    lim.admit(B, limits, 40)
    clock.now += 10
    d = lim.admit(B, limits, 50)  # needs the first 40 gone: at 1000 + WINDOW
    assert not d.admitted
    assert d.retry_after is not None and abs(d.retry_after - (WINDOW - 20)) < 1e-9


def test_not_enforced_tiers_pass_and_uncounted_ones_leave_no_trace() -> None:
    lim = RateLimiter(Clock())
    limits = Limits(rpm=1)
    assert lim.admit(B, limits, 1).admitted
    assert not lim.admit(B, limits, 1).admitted
    over = lim.admit(B, limits, 1, enforce=False)  # over-limit: admitted, counted
    assert over.admitted and over.snapshot is not None
    assert over.snapshot.requests_used == 2
    exempt = lim.admit(B, limits, 1, enforce=False, count=False)  # no-limit
    assert exempt.admitted and exempt.reservation is None
    assert exempt.snapshot is not None and exempt.snapshot.requests_used == 2


def test_cancel_takes_a_reservation_back() -> None:
    lim = RateLimiter(Clock())
    limits = Limits(rpm=1, tpm=10)
    d = lim.admit(B, limits, 10)
    assert d.reservation is not None
    lim.cancel(d.reservation)
    assert lim.admit(B, limits, 10).admitted


def test_buckets_are_per_key_and_model() -> None:
    lim = RateLimiter(Clock())
    limits = Limits(rpm=1)
    assert lim.admit(("a", "m1"), limits, 1).admitted
    assert lim.admit(("a", "m2"), limits, 1).admitted
    assert lim.admit(("b", "m1"), limits, 1).admitted
    assert not lim.admit(("a", "m1"), limits, 1).admitted


def test_no_over_admission_under_concurrent_threads() -> None:
    lim = RateLimiter()
    limits = Limits(rpm=50, tpm=10_000)
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(100):
            ok = lim.admit(B, limits, 7).admitted
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 50


def test_duration_format() -> None:
    assert duration(0.02) == "20ms"
    assert duration(1.5) == "1.5s"
    assert duration(59.8384) == "59.838s"
    assert duration(360) == "6m0s"
    assert duration(61.2) == "1m2s"
