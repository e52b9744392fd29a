"""Volumes on remote stores, against real servers on 127.0.0.1: HTTP (RangeServer serving
a directory TensorStore wrote), ``gs://`` through gcsfs against fake-gcs-server and
``s3://`` through s3fs against moto, writing included."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import fsspec.config
import numpy as np
import pytest
import tensorstore as ts

import precomputed
from precomputed import Context
from precomputed.errors import NotFoundError, ReadOnlyError
from servers import RangeServer

DRIVER = "neuroglancer_precomputed"
SIZE = (37, 29, 11)
CHUNK = (16, 16, 8)


def scale_md(**extra: Any) -> dict[str, Any]:
    return {
        "size": list(SIZE),
        "voxel_offset": [-5, 3, -2],
        "chunk_size": list(CHUNK),
        "resolution": [4, 4, 40],
        "encoding": "raw",
        **extra,
    }


def data_for(seed: int = 0, channels: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 60000, (*SIZE, channels), dtype=np.uint16)


# ---------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, http_server: RangeServer) -> tuple[RangeServer, dict[str, np.ndarray]]:
    """TensorStore writes ``vol`` (raw uint16, two scales, one chunk left missing) and
    ``seg`` (compressed_segmentation uint64) under a directory the server serves."""
    want: dict[str, np.ndarray] = {}
    base = {"driver": DRIVER, "kvstore": {"driver": "file", "path": str(tmp_path / "vol") + "/"}}
    mm = {"type": "image", "data_type": "uint16", "num_channels": 2}
    t0 = ts.open({**base, "multiscale_metadata": mm, "scale_metadata": scale_md()}, create=True)
    data = data_for(0)
    data[:, :, 6:, :] = 0  # the chunks of the last z row are all zero: not stored
    t0.result()[...] = data
    want["vol/0"] = data
    sm1 = scale_md(size=[19, 15, 11], voxel_offset=[-3, 1, -2], resolution=[8, 8, 40])
    t1 = ts.open({**base, "scale_metadata": sm1}, create=True).result()
    want["vol/1"] = np.random.default_rng(1).integers(0, 9, (19, 15, 11, 2), dtype=np.uint16)
    t1[...] = want["vol/1"]
    seg = {
        "driver": DRIVER,
        "kvstore": {"driver": "file", "path": str(tmp_path / "seg") + "/"},
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        "scale_metadata": scale_md(
            encoding="compressed_segmentation", compressed_segmentation_block_size=[8, 8, 8]
        ),
    }
    labels = np.random.default_rng(2).integers(0, 4, (*SIZE, 1)).astype(np.uint64) << np.uint64(40)
    ts.open(seg, create=True).result()[...] = labels
    want["seg/0"] = labels
    http_server.root = tmp_path
    return http_server, want


def gets(server: RangeServer) -> list[str]:
    return [p for method, p, _ in server.requests if method == "GET"]


@pytest.mark.parametrize(
    "form",
    ["url", "precomputed-url", "tensorstore-url", "spec", "spec-base-url-path"],
)
def test_http_read_matches_tensorstore(served: Any, form: str) -> None:
    server, want = served
    url = f"{server.url}/vol"
    target: Any = {
        "url": url,
        "precomputed-url": f"precomputed://{url}",
        "tensorstore-url": f"{url}/|neuroglancer-precomputed:",
        "spec": {"driver": DRIVER, "kvstore": {"driver": "http", "base_url": server.url, "path": "/vol/"}},
        "spec-base-url-path": {"driver": DRIVER, "kvstore": {"driver": "http", "base_url": url + "/"}},
    }[form]  # fmt: skip
    vol = precomputed.open(target, context=Context())
    assert vol.shape == (*SIZE, 2)
    assert vol.domain.inclusive_min == (-5, 3, -2, 0)
    np.testing.assert_array_equal(vol.read(), want["vol/0"])
    coarse = precomputed.open(target, scale_index=1, context=Context())
    assert coarse.scale.key == "8_8_40"
    np.testing.assert_array_equal(coarse.read(), want["vol/1"])
    seg = precomputed.open(url.replace("/vol", "/seg"), context=Context())
    np.testing.assert_array_equal(seg.read(), want["seg/0"])


def test_http_spec_reopens_in_tensorstore(served: Any) -> None:
    server, want = served
    vol = precomputed.open(f"precomputed://{server.url}/vol", context=Context())
    spec = vol[0:20, :, -2:6, :].spec()
    assert spec["kvstore"] == {"driver": "http", "base_url": server.url, "path": "/vol/"}
    t = ts.open(spec).result()  # TensorStore's own http kvstore, against our server
    np.testing.assert_array_equal(t.read().result(), want["vol/0"][5:25, :, 0:8, :])


def test_http_plane_read_requests_only_the_plane_chunks(served: Any) -> None:
    server, want = served
    server.clear_log()
    vol = precomputed.open(f"{server.url}/vol", context=Context())
    _ = (vol.shape, vol.dtype, vol.chunk_layout)
    assert gets(server) == ["/vol/info"]  # opening fetches metadata only
    server.clear_log()
    plane = vol[:, :, 3, :].read()
    np.testing.assert_array_equal(plane, want["vol/0"][:, :, 5, :])
    xs, ys = ("-5-11", "11-27", "27-32"), ("3-19", "19-32")
    # one ranged GET per chunk and channel (2 channels), each just the plane's bytes and
    # nothing else: the chunk's size (raw voxels only if it is exactly raw-sized) comes
    # with each answer's Content-Range, so no request probes it
    want_keys = [f"/vol/4_4_40/{x}_{y}_-2-6" for x in xs for y in ys]
    assert sorted(gets(server)) == sorted(want_keys * 2)
    probes = [r for m, _, r in server.requests if m == "GET" and r and _two_bytes(r)]
    assert probes == []
    assert not [m for m, _, _ in server.requests if m == "HEAD"]
    server.clear_log()
    vol[:, :, 3, :].read()  # cached
    assert gets(server) == []
    # missing chunks (404) read as zeros, one request per chunk and channel, no ".gz"
    # probing
    assert not vol[:, :, 7, :].read().any()
    assert len(gets(server)) == 6 * 2
    assert not any(p.endswith(".gz") for p in gets(server))


def _two_bytes(range_header: str) -> bool:
    a, b = range_header.removeprefix("bytes=").split("-")
    return int(b) - int(a) == 1


@pytest.mark.parametrize(
    ("context", "limit"),
    [
        (Context(io_concurrency=3), 3),
        (Context({"http_request_concurrency": {"limit": 2}}), 2),
        (None, None),
    ],
    ids=["io_concurrency", "tensorstore-json", "default"],
)
def test_http_requests_are_concurrent_and_bounded_by_the_context(
    served: Any, context: Context | None, limit: int | None
) -> None:
    server, want = served
    server.latency = 0.02
    vol = precomputed.open(f"{server.url}/vol", context=context or Context())
    server.clear_log()
    np.testing.assert_array_equal(vol[:, :, -2:6, :].read(), want["vol/0"][:, :, 0:8, :])
    assert len(gets(server)) == 6
    if limit is None:
        assert server.max_in_flight > 3  # (nearly) all at once
    else:
        assert 1 < server.max_in_flight <= limit


def test_http_missing_volume_and_chunks(served: Any) -> None:
    server, _ = served
    with pytest.raises(NotFoundError, match=r'Metadata at "nope/info" does not exist'):
        precomputed.open(f"{server.url}/nope")
    vol = precomputed.open(f"{server.url}/vol", fill_missing_data_reads=False, context=Context())
    with pytest.raises(NotFoundError, match=r"4_4_40/-5-11_3-19_6-9\" is missing"):
        vol[:, :, 7, :].read()


def test_http_is_read_only(served: Any) -> None:
    server, want = served
    vol = precomputed.open(f"{server.url}/vol", context=Context())
    with pytest.raises(ReadOnlyError, match="read-only"):
        vol[0:2, 3:5, 0, :] = 1
    with pytest.raises(PermissionError):
        with vol.transaction():
            vol[...] = 1
    with pytest.raises(ReadOnlyError):
        precomputed.open(f"{server.url}/new", create=True, dtype="uint8", shape=[4, 4, 4, 1])
    assert not [m for m, _, _ in server.requests if m not in ("GET", "HEAD")]
    np.testing.assert_array_equal(
        precomputed.open(f"{server.url}/vol", context=Context()).read(), want["vol/0"]
    )


# ---------------------------------------------------------------------------------------
# GCS and S3: create, write, read back
# ---------------------------------------------------------------------------------------


def roundtrip(url: str, storage_options: dict[str, Any]) -> None:
    """Create two scales at ``url``, write, reopen and read back; add scales concurrently."""
    mm = {"type": "image", "data_type": "uint16", "num_channels": 2}
    vol = precomputed.open(
        url,
        create=True,
        multiscale_metadata=mm,
        scale_metadata=scale_md(),
        storage_options=storage_options,
        context=Context(),
    )
    data = data_for(3)
    data[:16, :16, :8] = 0  # one all-zero chunk: not stored
    vol[...] = data
    vol[20:23, 10:12, 4, 1] = 7  # read-modify-write of a stored chunk
    data[25:28, 7:9, 6, 1] = 7
    # the store is rooted at the bucket; the volume lives under data/vol/
    keys = vol.kvstore.list("data/vol/")
    assert "data/vol/info" in keys
    assert len([k for k in keys if k.startswith("data/vol/4_4_40/")]) == 11
    again = precomputed.open(url, storage_options=storage_options, context=Context())
    np.testing.assert_array_equal(again.read(), data)
    np.testing.assert_array_equal(again[:, :, 4, :].read(), data[:, :, 6, :])

    # a second scale, and two more added concurrently: all end up in the info file
    sm1 = scale_md(size=[19, 15, 11], voxel_offset=[-3, 1, -2], resolution=[8, 8, 40])
    coarse = precomputed.open(
        url, create=True, scale_metadata=sm1, storage_options=storage_options, context=Context()
    )
    coarse[...] = 3
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def add(i: int) -> None:
        barrier.wait()
        try:
            precomputed.open(
                url,
                create=True,
                scale_metadata=scale_md(resolution=[16 * (i + 1), 16, 40]),
                storage_options=storage_options,
            )
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    scales = precomputed.open_scales(url, storage_options=storage_options, context=Context())
    assert [s.scale.key for s in scales[:2]] == ["4_4_40", "8_8_40"]
    assert {s.scale.key for s in scales[2:]} == {"16_16_40", "32_16_40"}  # in either order
    assert (scales[1].read() == 3).all()
    np.testing.assert_array_equal(scales[0].read(), data)

    # delete_existing empties the volume directory but the info file
    fresh = precomputed.open(
        url,
        create=True,
        delete_existing=True,
        multiscale_metadata=mm,
        scale_metadata=scale_md(),
        storage_options=storage_options,
        context=Context(),
    )
    assert fresh.kvstore.list("") == ["data/vol/info"]
    assert not fresh.read().any()


def test_gcs_create_write_read(gcs_bucket: str, gcs_storage_options: dict[str, Any]) -> None:
    roundtrip(f"gs://{gcs_bucket}/data/vol", gcs_storage_options)
    vol = precomputed.open(
        f"precomputed://gs://{gcs_bucket}/data/vol", storage_options=gcs_storage_options
    )
    assert vol.spec()["kvstore"] == {"driver": "gcs", "bucket": gcs_bucket, "path": "data/vol/"}


def test_gcs_endpoint_from_fsspec_config(
    gcs_bucket: str, gcs_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(fsspec.config.conf, "gs", dict(gcs_storage_options))
    spec = {
        "driver": DRIVER,
        "kvstore": {"driver": "gcs", "bucket": gcs_bucket, "path": "v/"},
        "multiscale_metadata": {"data_type": "uint8", "num_channels": 1},
        "scale_metadata": {"size": [5, 6, 7], "chunk_size": [4, 4, 4]},
    }
    vol = precomputed.open(spec, create=True, context=Context())
    vol[...] = np.arange(210, dtype=np.uint8).reshape(5, 6, 7, 1)
    again = precomputed.open(f"gs://{gcs_bucket}/v", context=Context())
    np.testing.assert_array_equal(again.read(), np.arange(210).reshape(5, 6, 7, 1))


def test_s3_create_write_read(s3_bucket: str, s3_storage_options: dict[str, Any]) -> None:
    roundtrip(f"s3://{s3_bucket}/data/vol", s3_storage_options)
    vol = precomputed.open(
        f"precomputed://s3://{s3_bucket}/data/vol", storage_options=s3_storage_options
    )
    kv = vol.spec()["kvstore"]
    assert (kv["driver"], kv["bucket"], kv["path"]) == ("s3", s3_bucket, "data/vol/")


def test_s3_endpoint_in_the_kvstore_spec(
    s3_bucket: str, s3_url: str, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorStore's ``endpoint``/``aws_region`` members; credentials from fsspec config."""
    creds = {"key": "testing", "secret": "testing"}
    monkeypatch.setitem(fsspec.config.conf, "s3", creds)
    kv = {
        "driver": "s3",
        "bucket": s3_bucket,
        "path": "v/",
        "endpoint": s3_url,
        "aws_region": "us-west-2",
    }
    spec = {
        "driver": DRIVER,
        "kvstore": kv,
        "multiscale_metadata": {"data_type": "float32", "num_channels": 1},
        "scale_metadata": {"size": [5, 6, 7], "chunk_size": [4, 4, 4]},
    }
    vol = precomputed.open(spec, create=True, context=Context())
    data = np.random.default_rng(0).standard_normal((5, 6, 7, 1)).astype(np.float32)
    vol[...] = data
    again = precomputed.open({"driver": DRIVER, "kvstore": kv}, context=Context())
    np.testing.assert_array_equal(again.read(), data)
    assert again.spec()["kvstore"] == kv
