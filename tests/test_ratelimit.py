"""Rate limiting per key (assistant.ratelimit): a token bucket per key, exact under concurrency, bounded in memory,
and a 429 with `Retry-After` through the app's error handlers (native and OpenAI-shaped)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import make_settings
from fastapi import APIRouter
from fastapi.testclient import TestClient

from assistant.app import create_app
from assistant.errors import RateLimited
from assistant.openai_api import OpenAIRoute
from assistant.ratelimit import RateLimiter


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def allowed(limiter: RateLimiter, key: str) -> bool:
    try:
        limiter.check(key)
    except RateLimited:
        return False
    return True


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)  # a token a second
    assert [allowed(limiter, "a") for _ in range(4)] == [True, True, True, False]
    with pytest.raises(RateLimited) as caught:
        limiter.check("a")
    assert caught.value.status_code == 429 and caught.value.code == "rate_limited"
    assert caught.value.retry_after_s == pytest.approx(1.0)
    assert caught.value.message == "too many requests: this key may send 60 a minute (bursts of 3); retry in 1 s"
    clock.now += 0.5
    assert not allowed(limiter, "a")
    with pytest.raises(RateLimited) as caught:
        limiter.check("a")
    assert caught.value.retry_after_s == pytest.approx(0.5)  # refused requests take nothing
    clock.now += 0.5
    assert allowed(limiter, "a") and not allowed(limiter, "a")  # one token a second
    clock.now += 10
    assert [allowed(limiter, "a") for _ in range(4)] == [True, True, True, False]  # full again, never above burst


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(per_minute=1, burst=2, clock=Clock())
    assert [allowed(limiter, "a") for _ in range(3)] == [True, True, False]
    assert [allowed(limiter, "b") for _ in range(3)] == [True, True, False]


def test_a_slow_rate_says_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=2, burst=1, clock=clock)  # a token every 30 s
    limiter.check("a")
    clock.now += 10
    with pytest.raises(RateLimited, match="retry in 20 s") as caught:
        limiter.check("a")
    assert caught.value.retry_after_s == pytest.approx(20.0)


def test_zero_per_minute_is_off() -> None:
    limiter = RateLimiter(per_minute=0, burst=1)
    assert not limiter.enabled
    for _ in range(1000):
        limiter.check("a")
    assert len(limiter) == 0  # nothing remembered


@pytest.mark.parametrize(("per_minute", "burst", "max_keys"), [(-1, 1, 10), (60, 0, 10), (60, 1, 0)])
def test_bad_parameters_are_refused(per_minute: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(per_minute, burst, max_keys=max_keys)


def test_concurrent_requests_get_exactly_the_burst() -> None:
    """16 threads × 50 requests on 3 keys at one instant (the clock stands still): exactly `burst` per key pass."""
    limiter = RateLimiter(per_minute=60, burst=100, clock=Clock())
    keys = ["a", "b", "c"]
    passed = dict.fromkeys(keys, 0)
    counted = threading.Lock()
    start = threading.Barrier(16)

    def client(n: int) -> None:
        start.wait()
        for i in range(50):
            key = keys[(n + i) % len(keys)]
            if allowed(limiter, key):
                with counted:
                    passed[key] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert passed == dict.fromkeys(keys, 100)  # 800 asked, 267 per key on average: 100 each, not one more


def test_concurrent_requests_over_time_never_pass_more_than_burst_plus_refill() -> None:
    """With the real clock: over the run, at most burst + rate × elapsed requests pass, and at least the burst."""
    limiter = RateLimiter(per_minute=600, burst=20)  # 10 a second
    passed = 0
    counted = threading.Lock()
    start = threading.Barrier(8)

    def client() -> None:
        nonlocal passed
        start.wait()
        for _ in range(200):
            if allowed(limiter, "k"):
                with counted:
                    passed += 1

    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.monotonic() - began
    assert 20 <= passed <= 20 + 10 * elapsed + 1


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=2, max_keys=100, clock=clock)
    for n in range(1000):
        limiter.check(f"key-{n}")
    assert len(limiter) == 100  # the least recently seen were forgotten
    # The most recent key is still remembered (its bucket is not full): it keeps its state.
    limiter.check("key-999")
    assert not allowed(limiter, "key-999")


def test_idle_keys_are_forgotten_once_their_bucket_is_full_again() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=5, clock=clock)  # empty to full in 5 s
    for n in range(50):
        for _ in range(5):
            limiter.check(f"idle-{n}")  # emptied
    assert len(limiter) == 50
    clock.now += 4.9
    limiter.check("busy")
    assert len(limiter) == 51  # not full yet: kept
    clock.now += 0.2
    limiter.check("busy")
    assert len(limiter) == 1  # the idle ones refilled: forgetting them changes nothing
    assert [allowed(limiter, "idle-0") for _ in range(6)] == [True] * 5 + [False]


# --- through the HTTP error handlers --------------------------------------------------------------------------


def test_429_with_retry_after_through_the_app(tmp_path: Path) -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=40, burst=2, clock=clock)  # a token every 1.5 s
    app = create_app(make_settings(tmp_path / "data"), preload=False)

    @app.get("/limited")
    def limited() -> dict[str, str]:
        limiter.check("key-1")
        return {"ok": "yes"}

    openai_style = APIRouter(route_class=OpenAIRoute)

    @openai_style.get("/limited-openai")
    def limited_openai() -> dict[str, str]:
        limiter.check("key-2")
        return {"ok": "yes"}

    app.include_router(openai_style)
    client = TestClient(app)
    assert [client.get("/limited").status_code for _ in range(2)] == [200, 200]
    refused = client.get("/limited")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"  # 1.5 s, rounded up to whole seconds
    assert refused.json() == {"error": "rate_limited", "detail": "too many requests: this key may send 40 a minute "
                                                                 "(bursts of 2); retry in 2 s"}
    clock.now += 1.2
    assert client.get("/limited").headers["retry-after"] == "1"  # 0.3 s left: never 0
    clock.now += 0.3
    assert client.get("/limited").status_code == 200

    assert [client.get("/limited-openai").status_code for _ in range(2)] == [200, 200]
    refused = client.get("/limited-openai")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limited", "invalid_request_error")

    other = client.get("/v1/documents/nope")  # any other error carries no Retry-After
    assert other.status_code == 404 and "retry-after" not in other.headers
