"""``precomputed.open`` end to end: the open/create flow and the I/O error cases of the
format reference §7 (spec parsing errors live in test_spec.py / test_metadata.py).

TensorStore 0.1.86 is the oracle where behaviour is observable from files: which keys it
stores, which it deletes, and that it reads what we leave behind.
"""

from __future__ import annotations

import gzip
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
from PIL import Image

import precomputed
from precomputed import Context
from precomputed.errors import (
    AlreadyExistsError,
    CorruptDataError,
    FailedPreconditionError,
    NotFoundError,
    OutOfRangeError,
)
from precomputed.kvstore import FileKvStore, MemoryKvStore

DRIVER = "neuroglancer_precomputed"


def file_spec(path: Path, **scale: Any) -> dict[str, Any]:
    """TensorStore's DriverTest.Create volume: uint16, 4 channels, offset [1, 2, 3]."""
    sm = {
        "size": [10, 99, 98],
        "voxel_offset": [1, 2, 3],
        "chunk_size": [3, 2, 2],
        "encoding": "raw",
        **scale,
    }
    return {
        "driver": DRIVER,
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "multiscale_metadata": {"type": "image", "data_type": "uint16", "num_channels": 4},
        "scale_metadata": sm,
    }


def small_spec(
    kvstore: Any, encoding: str = "raw", dtype: str = "uint8", channels: int = 1, **scale: Any
) -> dict[str, Any]:
    """A one-chunk-wide 3x4x4 volume with chunk [3, 4, 2] (two chunks along z)."""
    sm: dict[str, Any] = {"size": [3, 4, 4], "chunk_size": [3, 4, 2], "encoding": encoding}
    if encoding == "compressed_segmentation":
        sm["compressed_segmentation_block_size"] = [2, 2, 2]
    sm.update(scale)
    return {
        "driver": DRIVER,
        "kvstore": kvstore,
        "multiscale_metadata": {"type": "image", "data_type": dtype, "num_channels": channels},
        "scale_metadata": sm,
    }


def keys_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------
# Open / create flow
# ---------------------------------------------------------------------------------------


def test_open_non_existing_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r'Metadata at ".*/nope/info" does not exist'):
        precomputed.open(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):  # the builtin a caller would catch
        precomputed.open({"driver": DRIVER, "kvstore": "memory://no/such/volume/"})
    with pytest.raises(NotFoundError, match='Metadata at "no/such/vol/info" does not exist'):
        precomputed.open({"driver": DRIVER, "kvstore": {"driver": "memory"}, "path": "no/such/vol"})


def test_create_in_json_then_open(tmp_path: Path) -> None:
    spec = {**file_spec(tmp_path / "v"), "create": True}
    vol = precomputed.open(spec)
    assert vol.domain.inclusive_min == (1, 2, 3, 0)
    assert vol.domain.exclusive_max == (11, 101, 101, 4)
    assert vol.domain.labels == ("x", "y", "z", "channel")
    assert vol.dtype == np.uint16
    assert not vol[1:4, 2:5, 3:6, :].read().any()  # missing chunks read as zeros
    # open only, by URL, sees the same scale
    again = precomputed.open(f"file://{tmp_path}/v")
    assert again.shape == vol.shape
    assert again.scale.key == "1_1_1"


def test_open_with_metadata_already_read_reads_no_info(tmp_path: Path) -> None:
    # A caller that read the info (napari's probe) opens the volume without a second read.
    precomputed.open({**file_spec(tmp_path / "v"), "create": True})
    meta = precomputed.MultiscaleMetadata.loads((tmp_path / "v" / "info").read_bytes(), key="info")
    kv = FileKvStore(str(tmp_path / "v"))
    vols = precomputed.open_scales(str(tmp_path / "v"), kvstore=kv, metadata=meta)
    assert [v.shape for v in vols] == [(10, 99, 98, 4)]
    assert not kv.stats, kv.stats  # no I/O at all: not even the info
    ts_vol = ts.open({"driver": DRIVER, "kvstore": {"driver": "file", "path": str(tmp_path / "v")}}).result()
    assert vols[0].domain.inclusive_min == tuple(ts_vol.domain.inclusive_min)
    with pytest.raises(precomputed.InvalidArgumentError, match="metadata= opens an existing"):
        precomputed.open(str(tmp_path / "v"), metadata=meta, create=True, open=True)


def test_recreate_is_already_exists_and_open_create_opens(tmp_path: Path) -> None:
    spec = file_spec(tmp_path / "v")
    precomputed.open(spec, create=True)
    with pytest.raises(AlreadyExistsError, match='Scale with key "1_1_1" already exists'):
        precomputed.open(spec, create=True)
    with pytest.raises(FileExistsError):
        precomputed.open({**spec, "create": True})
    vol = precomputed.open(spec, open=True, create=True)
    assert vol.scale_index == 0
    vol = precomputed.open(spec)  # open only
    assert vol.scale_index == 0
    assert len(json.loads((tmp_path / "v" / "info").read_text())["scales"]) == 1


def test_open_or_create_adds_a_scale_only_when_selection_finds_none(tmp_path: Path) -> None:
    """Only NOT_FOUND from scale selection falls through to creation (§2.4)."""
    spec = file_spec(tmp_path / "v")
    precomputed.open(spec, create=True)
    vol = precomputed.open(file_spec(tmp_path / "v", resolution=[2, 2, 2]), open=True, create=True)
    assert vol.scale_index == 1  # a new resolution: created
    vol = precomputed.open(file_spec(tmp_path / "v", resolution=[2, 2, 2]), open=True, create=True)
    assert vol.scale_index == 1  # now it exists: opened
    with pytest.raises(FailedPreconditionError, match=r'Expected "size" of \[3,3,3\]'):
        precomputed.open(file_spec(tmp_path / "v", size=[3, 3, 3]), open=True, create=True)
    with pytest.raises(
        FailedPreconditionError, match="Scale 2 does not exist, number of scales is 2"
    ):
        precomputed.open(spec, open=True, create=True, scale_index=2)
    assert len(json.loads((tmp_path / "v" / "info").read_text())["scales"]) == 2


def test_open_or_create_on_empty_store(tmp_path: Path) -> None:
    vol = precomputed.open(file_spec(tmp_path / "v"), open=True, create=True)
    assert (tmp_path / "v" / "info").exists()
    assert vol.scale.key == "1_1_1"
    ts.open(file_spec(tmp_path / "v")).result()  # TensorStore opens what we created


def test_delete_existing_leaves_only_info(tmp_path: Path) -> None:
    spec = file_spec(tmp_path / "v")
    vol = precomputed.open(spec, create=True)
    vol[1:11, 2:10, 3:8, :] = 7
    # another scale and a stray file under the volume directory go too
    second = file_spec(tmp_path / "v", resolution=[2, 2, 2], size=[4, 4, 4], voxel_offset=[0, 0, 0])
    precomputed.open(second, create=True)[...] = 1
    (tmp_path / "v" / "mesh").mkdir()
    (tmp_path / "v" / "mesh" / "1:0").write_bytes(b"x")
    assert len(keys_under(tmp_path / "v")) > 3
    vol = precomputed.open(spec, create=True, delete_existing=True, context=Context())
    assert keys_under(tmp_path / "v") == ["info"]
    assert len(json.loads((tmp_path / "v" / "info").read_text())["scales"]) == 1
    assert not vol[1:11, 2:10, 3:8, :].read().any()


def test_create_only_adds_a_second_scale(tmp_path: Path) -> None:
    precomputed.open(file_spec(tmp_path / "v"), create=True)
    second = file_spec(tmp_path / "v", resolution=[2, 2, 2], size=[5, 6, 7], voxel_offset=[0, 1, 1])
    vol = precomputed.open(second, create=True)
    assert vol.scale_index == 1
    assert vol.scale.key == "2_2_2"
    info = json.loads((tmp_path / "v" / "info").read_text())
    assert [s["key"] for s in info["scales"]] == ["1_1_1", "2_2_2"]
    vol[0:5, 1:7, 1:8, :] = 3
    t = ts.open({"driver": DRIVER, "kvstore": f"file://{tmp_path}/v/", "scale_index": 1}).result()
    assert (t.read().result() == 3).all()
    # adding it again is ALREADY_EXISTS (resolution-generated key collides)
    with pytest.raises(AlreadyExistsError, match='Scale with key "2_2_2" already exists'):
        precomputed.open(second, create=True)


def concurrent_adders(spec_for: Any, n: int) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = precomputed.open(spec_for(i), create=True)
        except Exception as e:  # reported below, with the thread's index
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("store", ["file", "memory"])
def test_concurrent_adders_of_different_scales_all_end_up_in_info(
    tmp_path: Path, store: str, memory_store: MemoryKvStore
) -> None:
    n = 6
    if store == "file":
        kv: Any = {"driver": "file", "path": str(tmp_path / "v") + "/"}
        reader: Any = FileKvStore(tmp_path / "v")
    else:
        kv = memory_store.spec()
        reader = memory_store

    def spec_for(i: int) -> dict[str, Any]:
        return small_spec(kv, resolution=[i + 1, i + 1, i + 1])

    for _ in range(3):  # a few rounds: the race is on the very first info write too
        reader.delete_prefix("")
        vols = concurrent_adders(spec_for, n)
        errors = [v for v in vols if isinstance(v, Exception)]
        assert not errors, errors
        info = json.loads(reader.read("info"))
        assert sorted(s["key"] for s in info["scales"]) == sorted(
            f"{i}_{i}_{i}" for i in range(1, n + 1)
        )
        # each volume knows its own scale index, matching the file
        for i, vol in enumerate(vols):
            assert info["scales"][vol.scale_index]["key"] == f"{i + 1}_{i + 1}_{i + 1}"


def test_concurrent_adders_of_the_same_scale_one_wins(tmp_path: Path) -> None:
    spec = small_spec({"driver": "file", "path": str(tmp_path / "v") + "/"})
    vols = concurrent_adders(lambda i: spec, 4)
    assert sum(not isinstance(v, Exception) for v in vols) == 1
    assert all(isinstance(v, AlreadyExistsError) for v in vols if isinstance(v, Exception))


# ---------------------------------------------------------------------------------------
# I/O errors
# ---------------------------------------------------------------------------------------


def test_out_of_domain_reads_and_writes_are_out_of_range(tmp_path: Path) -> None:
    vol = precomputed.open(file_spec(tmp_path / "v"), create=True)
    msg = r"Slice interval \[9, 12\) is not contained within domain \[1, 11\)"
    with pytest.raises(OutOfRangeError, match=msg):
        vol[9:12].read()
    with pytest.raises(OutOfRangeError, match=msg):
        vol[9:12] = 1
    with pytest.raises(OutOfRangeError, match=r"Slice interval \[0, 3\)"):
        vol[0:3, 2:4]  # below the voxel offset
    with pytest.raises(OutOfRangeError, match=r"Index 11 is outside valid range \[1, 11\)"):
        vol[11]
    with pytest.raises(OutOfRangeError, match=r"domain \[0, 4\)"):
        vol[1:2, 2:3, 3:4, 4:5] = 1  # channel
    with pytest.raises(IndexError):  # the builtin
        vol[1:3, 0:5].read()
    # a view's domain is the new bound
    view = vol[2:5, 2:5, 3:5, :]
    with pytest.raises(OutOfRangeError, match=r"domain \[2, 5\)"):
        view[1:3]
    assert not list((tmp_path / "v").glob("1_1_1/*"))  # nothing was written


def test_missing_chunk_with_fill_missing_data_reads_false_names_the_chunk(tmp_path: Path) -> None:
    spec = file_spec(tmp_path / "v")
    precomputed.open(spec, create=True)[1:4, 2:4, 3:5, :] = 1  # chunk {0,0,0} exists
    vol = precomputed.open({**spec, "fill_missing_data_reads": False}, context=Context())
    assert (vol[1:4, 2:4, 3:5, :].read() == 1).all()
    with pytest.raises(
        NotFoundError, match=r'chunk \{1, 1, 1\} stored at ".*/v/1_1_1/4-7_4-6_5-7" is missing'
    ):
        vol[4:7, 4:6, 5:7, :].read()
    # The keyword option works the same, and the spec records it.
    vol = precomputed.open(spec, fill_missing_data_reads=False, context=Context())
    assert vol.spec()["fill_missing_data_reads"] is False
    with pytest.raises(NotFoundError, match="1_1_1/1-4_4-6_3-5"):
        vol[1:4, 2:6, 3:5, :].read()
    # Writes still treat a missing chunk as zeros (read-modify-write of a partial chunk).
    vol[4:5, 4:5, 5:6, 0] = 9
    got = vol[4:7, 4:6, 5:7, :].read()
    assert got[0, 0, 0, 0] == 9 and got.sum() == 9
    # TensorStore agrees on which chunks exist.
    t = ts.open({**spec, "fill_missing_data_reads": False}).result()
    with pytest.raises(ValueError, match="NOT_FOUND.*1_1_1/1-4_4-6_3-5"):
        t[1:4, 2:6, 3:5, :].read().result()


def test_raw_chunk_of_wrong_length_is_corrupt(tmp_path: Path) -> None:
    spec = file_spec(tmp_path / "v")
    vol = precomputed.open(spec, create=True, context=Context())
    (tmp_path / "v" / "1_1_1").mkdir()
    (tmp_path / "v" / "1_1_1" / "1-4_2-4_3-5").write_bytes(b"abc")
    msg = (
        r'Error reading ".*1_1_1/1-4_2-4_3-5": Expected chunk length to be 96, but received 3 bytes'
    )
    with pytest.raises(CorruptDataError, match=msg):
        vol[1:4, 2:4, 3:5, :].read()
    with pytest.raises(FailedPreconditionError, match="Expected chunk length"):
        vol[1:2, 2:3, 3:4, 0] = 1  # a partial write must read the chunk first
    vol[1:4, 2:4, 3:5, :] = 2  # a full-chunk write replaces it without reading
    assert (vol[1:4, 2:4, 3:5, :].read() == 2).all()
    assert len((tmp_path / "v" / "1_1_1" / "1-4_2-4_3-5").read_bytes()) == 96


def _image(shape_hw: tuple[int, ...], fmt: str, dtype: Any = np.uint8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape_hw, dtype)).save(buf, format=fmt)
    return buf.getvalue()


CORRUPT = [
    # (encoding, dtype, stored bytes, message fragment)
    ("compressed_segmentation", "uint32", b"junk", "Corrupted Neuroglancer compressed segmentation"),
    ("compressed_segmentation", "uint64", b"\x01\x00\x00\x00" + b"\xff" * 12, "Corrupted Neuroglancer compressed segmentation"),
    ("jpeg", "uint8", b"junk", "Not a JPEG file"),
    ("jpeg", "uint8", _image((8, 3, 3), "JPEG"), r"Image dimensions \(3, 8, 3\) are not compatible with expected chunk shape \{1, 2, 4, 3\}"),
    ("jpeg", "uint8", _image((5, 3), "JPEG"), r"Image dimensions \(3, 5, 1\) are not compatible"),
    ("png", "uint8", b"junk", "Failed to decode PNG"),
    ("png", "uint8", _image((8, 3, 3), "PNG"), r"Image dimensions \(3, 8, 3\) are not compatible with expected chunk shape \{1, 2, 4, 3\}"),
    ("png", "uint16", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "PNG"),
    ("png", "uint16", _image((8, 3), "PNG"), "PNG"),  # 8-bit image in a uint16 volume
    ("png", "uint8", _image((8, 3), "PNG", np.uint16), "PNG"),  # 16-bit image in uint8
]  # fmt: skip


@pytest.mark.parametrize(
    ("encoding", "dtype", "data", "fragment"),
    CORRUPT,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CORRUPT)],
)
def test_corrupt_chunks_raise_corrupt_data_naming_the_key(
    memory_store: MemoryKvStore, encoding: str, dtype: str, data: bytes, fragment: str
) -> None:
    vol = precomputed.open(
        small_spec(memory_store.spec(), encoding, dtype), create=True, context=Context()
    )
    memory_store.write("1_1_1/0-3_0-4_0-2", data)
    with pytest.raises(CorruptDataError, match=fragment) as exc:
        vol.read()
    assert '"' + memory_store.path + '/1_1_1/0-3_0-4_0-2"' in str(exc.value) or (
        "1_1_1/0-3_0-4_0-2" in str(exc.value)
    )
    # the other chunk is fine
    assert not vol[:, :, 2:4, :].read().any()


def test_png_bit_depth_mismatch_is_rejected() -> None:
    """TensorStore silently mis-decodes an 8-bit PNG in a uint16 volume; we reject it."""
    store = MemoryKvStore("png-depth")
    try:
        vol = precomputed.open(small_spec(store.spec(), "png", "uint16"), create=True)
        store.write("1_1_1/0-3_0-4_0-2", _image((8, 3), "PNG"))
        with pytest.raises(CorruptDataError):
            vol[:, :, 0:2, :].read()
    finally:
        store.delete_prefix("")


# ---------------------------------------------------------------------------------------
# Fill value, gzip from CloudVolume
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("store_zeros", [False, True])
def test_store_data_equal_to_fill_value(tmp_path: Path, store_zeros: bool) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    opt = {"store_data_equal_to_fill_value": store_zeros}
    vol = precomputed.open({**small_spec(f"file://{ours}/"), **opt}, create=True)
    t = ts.open({**small_spec(f"file://{theirs}/"), **opt}, create=True).result()
    data = np.arange(1, 49, dtype=np.uint8).reshape(3, 4, 4, 1)
    for target in (vol, t):
        target[...] = data
        target[:, :, 0:2, :] = 0  # chunk 0 becomes all zeros: deleted unless store_zeros
        target[0:1, 0:1, 2:3, :] = 0  # chunk 1 only partly zero: kept
    want = ["1_1_1/0-3_0-4_2-4", "info"]
    if store_zeros:
        want.insert(0, "1_1_1/0-3_0-4_0-2")
    assert keys_under(ours) == keys_under(theirs) == want
    if store_zeros:
        assert (ours / "1_1_1" / "0-3_0-4_0-2").read_bytes() == bytes(24)
    # a chunk never written and written as zeros: not created unless store_zeros
    vol2 = precomputed.open({**small_spec(f"file://{tmp_path}/z/"), **opt}, create=True)
    vol2[...] = 0
    assert keys_under(tmp_path / "z") == (
        ["1_1_1/0-3_0-4_0-2", "1_1_1/0-3_0-4_2-4", "info"] if store_zeros else ["info"]
    )
    expected = data.copy()
    expected[:, :, 0:2] = 0
    expected[0, 0, 2] = 0
    np.testing.assert_array_equal(precomputed.open(f"file://{ours}/").read(), expected)
    np.testing.assert_array_equal(
        ts.open({"driver": DRIVER, "kvstore": f"file://{ours}/"}).result().read().result(), expected
    )


@pytest.mark.parametrize("store", ["file", "memory"])
@pytest.mark.parametrize("encoding", ["raw", "compressed_segmentation"])
def test_gzip_chunks_written_by_cloudvolume_are_read(
    tmp_path: Path, memory_store: MemoryKvStore, store: str, encoding: str
) -> None:
    kv: Any = FileKvStore(tmp_path / "v") if store == "file" else memory_store
    dtype = "uint32" if encoding == "compressed_segmentation" else "uint16"
    vol = precomputed.open(small_spec(kv.spec(), encoding, dtype), create=True, context=Context())
    data = np.arange(3 * 4 * 4, dtype=dtype).reshape(3, 4, 4, 1) + 1
    vol[...] = data
    plain = {k: kv.read(k) for k in kv.list("1_1_1/")}
    assert sorted(plain) == ["1_1_1/0-3_0-4_0-2", "1_1_1/0-3_0-4_2-4"]
    # CloudVolume with compress="gzip": gzip bytes under the plain key ...
    kv.write("1_1_1/0-3_0-4_0-2", gzip.compress(plain["1_1_1/0-3_0-4_0-2"]))
    # ... or, on local disk, under a ".gz" sibling with no plain key.
    kv.delete("1_1_1/0-3_0-4_2-4")
    kv.write("1_1_1/0-3_0-4_2-4.gz", gzip.compress(plain["1_1_1/0-3_0-4_2-4"]))
    fresh = precomputed.open(kv.url, context=Context())
    np.testing.assert_array_equal(fresh.read(), data)
    # Overwriting replaces the .gz sibling with a plain chunk; zeros delete both.
    fresh[:, :, 2:4, :] = 0
    assert kv.list("1_1_1/") == ["1_1_1/0-3_0-4_0-2"]
    np.testing.assert_array_equal(fresh[:, :, 0:2, :].read(), data[:, :, 0:2])


def test_raw_chunk_that_starts_like_gzip_is_not_mangled(memory_store: MemoryKvStore) -> None:
    vol = precomputed.open(small_spec(memory_store.spec()), create=True, context=Context())
    data = np.zeros((3, 4, 4, 1), np.uint8)
    data[0, 0, 0, 0], data[1, 0, 0, 0] = 0x1F, 0x8B  # the gzip magic
    vol[...] = data
    np.testing.assert_array_equal(
        precomputed.open(memory_store.url, context=Context()).read(), data
    )
