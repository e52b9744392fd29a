"""Retry policy and timeouts: defaults, TensorStore's JSON names, where they are read
from (spec member, spec context, open_kvstore options), and the retry loop itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from precomputed.errors import InvalidArgumentError, UnavailableError
from precomputed.kvstore import RetryPolicy, Timeouts, open_kvstore
from precomputed.kvstore.retry import Transient, parse_duration, parse_retry_after, retrying


def test_defaults() -> None:
    assert RetryPolicy() == RetryPolicy(max_retries=8, initial_delay=0.5, max_delay=16.0, total_timeout=60.0)
    assert Timeouts() == Timeouts(connect=10.0, read=30.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), ("10us", 1e-5), (3, 3.0), (0.5, 0.5)],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value, "d") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["fast", "-1s", True, None, [1], float("nan"), float("inf"), "1 week"])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_duration(value, "d")


def test_policy_from_tensorstore_json() -> None:
    p = RetryPolicy.from_json({"max_retries": 3, "initial_delay": "10ms", "max_delay": "1s"}, "x", extensions=False)
    assert (p.max_retries, p.initial_delay, p.max_delay, p.total_timeout) == (3, 0.01, 1.0, 60.0)
    with pytest.raises(InvalidArgumentError, match="total_timeout"):
        RetryPolicy.from_json({"total_timeout": 5}, "x", extensions=False)  # not TensorStore's
    with pytest.raises(InvalidArgumentError, match="colour"):
        RetryPolicy.from_json({"colour": 1}, "x")
    with pytest.raises(InvalidArgumentError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(InvalidArgumentError):
        RetryPolicy.from_json([1], "x")


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    p = RetryPolicy(initial_delay=0.1, max_delay=1.0)
    for retry, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (40, 1.0)]:
        delays = [p.backoff(retry) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (parse_retry_after(future) or 0) <= 30


def test_the_loop_retries_transient_failures_only() -> None:
    p = RetryPolicy(max_retries=3, initial_delay=0.001, max_delay=0.002)
    calls: list[int] = []

    async def flaky(n: int) -> str:
        calls.append(n)
        if n < 2:
            raise Transient("HTTP 503")
        return "ok"

    assert asyncio.run(retrying(p, "reading x", flaky)) == ("ok", 3)
    assert calls == [0, 1, 2]

    async def down(n: int) -> str:
        raise Transient("HTTP 503")

    with pytest.raises(UnavailableError, match=r"reading x: HTTP 503 \(gave up after 4 attempts"):
        asyncio.run(retrying(p, "reading x", down))

    async def broken(n: int) -> str:
        raise ValueError("not transient")

    with pytest.raises(ValueError):
        asyncio.run(retrying(p, "reading x", broken))


def test_the_loop_keeps_to_its_time_budget() -> None:
    p = RetryPolicy(max_retries=1000, initial_delay=0.05, max_delay=0.05, total_timeout=0.3)

    async def down(n: int) -> str:
        raise Transient("HTTP 500")

    t0 = time.monotonic()
    with pytest.raises(UnavailableError, match="total_timeout=0.3"):
        asyncio.run(retrying(p, "reading x", down))
    assert time.monotonic() - t0 < 0.5


# -- where the policy comes from -----------------------------------------------------------


def _policy(store: Any) -> tuple[Any, ...]:
    r, t = store.retries, store.timeouts
    return (r.max_retries, r.initial_delay, r.max_delay, r.total_timeout, t.connect, t.read)


def test_spec_member_context_and_options(gcs_storage_options: dict[str, Any]) -> None:
    base = {"driver": "gcs", "bucket": "some-bucket"}
    ts_retries = {"max_retries": 3, "initial_delay": "10ms", "max_delay": "2s"}
    opts = gcs_storage_options
    assert _policy(open_kvstore(base, **opts)) == (8, 0.5, 16.0, 60.0, 10.0, 30.0)
    inline = open_kvstore({**base, "gcs_request_retries": ts_retries}, **opts)
    assert _policy(inline) == (3, 0.01, 2.0, 60.0, 10.0, 30.0)
    in_context = open_kvstore({**base, "context": {"gcs_request_retries": ts_retries}}, **opts)
    assert _policy(in_context) == (3, 0.01, 2.0, 60.0, 10.0, 30.0)
    named = {**base, "gcs_request_retries": "gcs_request_retries#fast",
             "context": {"gcs_request_retries#fast": {"max_retries": 1}}}  # fmt: skip
    assert _policy(open_kvstore(named, **opts))[0] == 1
    # Options override the spec, member by member; timeouts are options only.
    both = open_kvstore(
        {**base, "gcs_request_retries": ts_retries},
        **opts,
        retries={"max_retries": 5, "total_timeout": "5s"},
        connect_timeout=1,
        read_timeout="500ms",
    )
    assert _policy(both) == (5, 0.01, 2.0, 5.0, 1.0, 0.5)
    with pytest.raises(InvalidArgumentError):
        open_kvstore({**base, "gcs_request_retries": {"max_retries": "many"}}, **opts)
    with pytest.raises(InvalidArgumentError):
        open_kvstore(base, **opts, read_timeout=0)


def test_tensorstore_accepts_the_same_spec_members() -> None:
    ts = pytest.importorskip("tensorstore")
    for driver, extra in [
        ("gcs", {"bucket": "my-bucket"}),
        ("s3", {"bucket": "my-bucket"}),
        ("http", {"base_url": "http://h.example/"}),
    ]:
        member = {f"{driver}_request_retries": {"max_retries": 3, "initial_delay": "10ms", "max_delay": "1s"}}
        ts.KvStore.Spec({"driver": driver, **extra, **member})
        ts.KvStore.Spec({"driver": driver, **extra, "context": member})
        open_kvstore({"driver": driver, **extra, **member})
        open_kvstore({"driver": driver, **extra, "context": member})


def test_s3_botocore_retries_are_off_and_timeouts_passed(s3_storage_options: dict[str, Any]) -> None:
    store = open_kvstore(
        "s3://some-bucket/p/", **s3_storage_options, connect_timeout=2, read_timeout=3
    )
    config = store.fs.config_kwargs  # type: ignore[attr-defined]
    assert config["retries"] == {"total_max_attempts": 1}  # the store's policy is the only one
    assert (config["connect_timeout"], config["read_timeout"]) == (2.0, 3.0)
    assert _policy(store)[4:] == (2.0, 3.0)


def test_http_options_reach_the_store(http_server: Any) -> None:
    store = open_kvstore(http_server.url + "/", retries={"max_retries": 0}, read_timeout=1)
    assert _policy(store)[0] == 0 and store.timeouts.read == 1.0
    store_spec = open_kvstore(
        {"driver": "http", "base_url": http_server.url, "http_request_retries": {"max_retries": 2}}
    )
    assert store_spec.retries.max_retries == 2  # type: ignore[attr-defined]
