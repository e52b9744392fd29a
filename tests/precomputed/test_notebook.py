"""The notebook slice viewer without a browser: the model's picture follows z, the scale
and the overlay; the ipywidgets controls drive it; no napari or Qt is imported."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import precomputed
from precomputed.notebook import SliceViewer, view
from precomputed.reprs import label_colors, to_uint8
from precomputed.samples import sample_volumes


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return sample_volumes(tmp_path_factory.mktemp("sample"))


def test_the_picture_is_the_plane_at_z_of_the_chosen_scale(sample: tuple[str, str]) -> None:
    image, _ = sample
    v = SliceViewer(image, scale=0)
    assert v.z == 31 and v.z_range == (0, 64)
    plane = precomputed.open(image)[:, :, 31, 0].read().T  # y, x
    lims = v.limits()
    np.testing.assert_array_equal(v.render()[..., 0], to_uint8(plane, lims))
    v.z = 5
    plane5 = precomputed.open(image)[:, :, 5, 0].read().T
    np.testing.assert_array_equal(v.render()[..., 0], to_uint8(plane5, lims))  # same window
    v.scale = 2
    assert v.render().shape == (64, 64, 3)
    coarse = precomputed.open(image, scale_index=2)[:, :, 5, 0].read().T
    np.testing.assert_array_equal(v.render()[..., 0], to_uint8(coarse, v.limits()))
    with pytest.raises(precomputed.InvalidArgumentError, match=r"z must be in \[0, 64\)"):
        v.z = 64


def test_the_segmentation_is_composited_where_labels_are(sample: tuple[str, str]) -> None:
    image, seg = sample
    v = SliceViewer(image, seg, scale=1, opacity=0.5)
    ids = precomputed.open(seg, scale_index=1)[:, :, v.z, 0].read().T
    np.testing.assert_array_equal(v.labels(), ids)
    grey = SliceViewer(image, scale=1).render().astype(np.float32)
    want = (grey * 0.5 + label_colors(ids).astype(np.float32) * 0.5 + 0.5).astype(np.uint8)
    want[ids == 0] = grey[ids == 0].astype(np.uint8)
    np.testing.assert_array_equal(v.render(), want)
    v.overlay = False
    np.testing.assert_array_equal(v.render(), grey.astype(np.uint8))
    # a segmentation alone: label colours
    only = SliceViewer(segmentation=seg, scale=2)
    np.testing.assert_array_equal(
        only.render(), label_colors(precomputed.open(seg, scale_index=2)[:, :, only.z, 0].read().T)
    )


def test_an_overlay_at_another_resolution_is_placed_by_position(
    sample: tuple[str, str],
) -> None:
    image, seg = sample
    # the segmentation's finest scale only (8 nm), under the image's 32 nm scale
    v = SliceViewer(image, precomputed.open(seg), scale=2)
    v.segmentation = v.segmentation[:1]  # type: ignore[index]
    ids = v.labels()
    fine = precomputed.open(seg)[:, :, v.z, 0].read()  # x, y at 8 nm
    assert ids is not None and ids.shape == (64, 64)
    # pixel (j, i) of the 32 nm plane has its centre at 32 (i + 0.5) nm = fine voxel 4 i + 2
    np.testing.assert_array_equal(ids, fine[2::4, 2::4].T)


def test_the_widget_drives_the_model(sample: tuple[str, str]) -> None:
    pytest.importorskip("ipywidgets", reason="the notebook extra (ipywidgets) is not installed")
    image, seg = sample
    box = view(image, seg, scale=2)
    model = box.viewer

    def shown() -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(box.picture.value)))

    np.testing.assert_array_equal(shown(), model.render())
    before = box.picture.value
    box.z_slider.value = 3
    assert model.z == 3 and box.picture.value != before
    np.testing.assert_array_equal(shown(), model.render())
    box.scale_menu.value = 1
    assert model.scale == 1 and shown().shape == (128, 128, 3)
    with_overlay = shown()
    box.overlay_box.value = False
    assert not model.overlay
    assert not np.array_equal(shown(), with_overlay)
    box.overlay_box.value = True
    box.opacity_slider.value = 1.0
    ids = model.labels()
    np.testing.assert_array_equal(shown()[ids != 0], label_colors(ids)[ids != 0])


def test_the_viewer_imports_no_napari_or_qt(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from precomputed.samples import sample_volumes\n"
        "from precomputed.notebook import view\n"
        f"image, seg = sample_volumes({str(tmp_path)!r})\n"
        "view(image, seg)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')]\n"
        "print(bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
