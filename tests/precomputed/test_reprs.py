"""The notebook display of volumes and views: the scales table and a thumbnail of the
middle plane, read from the coarsest scale."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import precomputed
from precomputed.reprs import label_colors
from precomputed.samples import sample_volumes


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return sample_volumes(tmp_path_factory.mktemp("sample"))


def thumbnail(html: str) -> np.ndarray:
    m = re.search(r'src="data:image/png;base64,([^"]+)"', html)
    assert m, html[-300:]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))))


def test_a_volume_shows_its_scales_and_a_thumbnail_of_the_coarsest_scale(
    sample: tuple[str, str],
) -> None:
    _, seg = sample
    vol = precomputed.open(seg)
    html = vol._repr_html_()
    assert html.count("<tr") == 1 + len(vol.metadata.scales)
    for s in vol.metadata.scales:
        assert f"<td>{s.key}</td>" in html
    assert "shard file" in html  # the sharded scale, in words
    coarse = precomputed.open(seg, scale_index=len(vol.metadata.scales) - 1)
    z = (vol.domain.inclusive_min[2] + vol.domain.exclusive_max[2] - 1) // 2  # same z (x, y only downsampled)
    plane = coarse[:, :, z, 0].read()  # x, y
    pic = thumbnail(html)
    assert pic.shape == (plane.shape[1], plane.shape[0], 3)  # rows are y
    np.testing.assert_array_equal(pic, label_colors(plane.T))


def test_a_view_shows_its_own_region(sample: tuple[str, str]) -> None:
    image, _ = sample
    view = precomputed.open(image)[32:160, 64:128, 10:20, :]
    pic = thumbnail(view._repr_html_())
    assert pic.shape == (64 // 4, 128 // 4, 3)  # the coarsest scale is 4x coarser in x, y
    assert pic.std() > 0  # not blank
    zyx = precomputed.open(image).zyx()
    html = zyx._repr_html_()
    assert html is not None and "ZyxArray shape=(64, 256, 256)" in html and "base64" in html


def test_display_never_raises(tmp_path: Path) -> None:
    vol = precomputed.open(
        {"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path}/v/"},
        create=True, dtype="uint16", shape=[8, 8, 4, 1],
    )
    (tmp_path / "v" / "1_1_1").mkdir(exist_ok=True)
    (tmp_path / "v" / "1_1_1" / "0-8_0-8_0-4").write_bytes(b"not a chunk")
    html = vol._repr_html_()
    assert "no thumbnail:" in html and "0-8_0-8_0-4" in html
