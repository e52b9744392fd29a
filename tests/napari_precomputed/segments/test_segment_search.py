"""Searching a layer's segments (its features) and showing only some of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from segment_cases import BOX, SPHERE, add_reader_layer, make_segmentation

from napari_precomputed.segments.search import SegmentRow, SegmentTable
from napari_precomputed.segments.selection import (
    label_colors,
    original_colormap,
    show_all,
    show_only,
    showing_only,
)
from precomputed import InvalidArgumentError


@pytest.fixture
def table(tmp_path: Path) -> SegmentTable:
    from napari.components import ViewerModel

    layer = add_reader_layer(
        ViewerModel(), make_segmentation(tmp_path / "seg", with_meshes=False)
    )
    return SegmentTable.from_layer(layer)


def test_search_by_label_regex_id_and_tag(table: SegmentTable) -> None:
    assert len(table) == 4 and table.tag_names == ("excitatory", "inhibitory", "soma")
    assert table.search("pyram").tolist() == [SPHERE]  # substring, any case
    assert table.search("CELL").tolist() == [SPHERE, 4]
    assert table.search(r"^b\w+ (cell|interneuron)$", regex=True).tolist() == [BOX, 4]
    assert table.search("", tags=["soma"]).tolist() == [SPHERE, BOX]
    assert table.search("cell", tags=["#Inhibitory"]).tolist() == [4]  # tags: any case, '#'
    assert table.search("", tags=["soma", "inhibitory"]).tolist() == [BOX]
    assert table.search("", tags=["nope"]).tolist() == []
    assert table.search(str(BOX)).tolist() == [BOX]  # by id
    assert table.search("5").tolist() == [5]  # an id without properties
    assert table.search("").tolist() == [SPHERE, BOX, 3, 4]
    with pytest.raises(InvalidArgumentError, match="regular expression"):
        table.search("(", regex=True)
    assert table.rows([BOX, 5]) == [
        SegmentRow(BOX, "Box interneuron", ("inhibitory", "soma")),
        SegmentRow(5, "", ()),
    ]


def test_a_table_from_features_napari_holds() -> None:
    import pandas as pd

    features = pd.DataFrame({"index": [1, 2, 3], "name": ["a", "b", "ab"]})
    t = SegmentTable(features, label_column="name")
    assert t.search("a").tolist() == [1, 3] and t.tag_names == ()
    assert len(SegmentTable(pd.DataFrame())) == 0


def test_show_only_selected_segments_in_their_colours(tmp_path: Path) -> None:
    """Several ids, one of them above 2**16 (napari's numpy path handles only 16-bit
    labels in a direct colormap without numba): only they are drawn, in their colours."""
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layer = add_reader_layer(viewer, make_segmentation(tmp_path / "seg", with_meshes=False))
    own = layer.colormap
    colours = own.map(np.array([SPHERE, BOX, 3], np.uint64))
    show_only(layer, [SPHERE, BOX])
    assert showing_only(layer) == (SPHERE, BOX) and original_colormap(layer) is own
    np.testing.assert_allclose(label_colors(layer, [SPHERE, BOX]), colours[:2])
    data = np.asarray(layer.data[0] if layer.multiscale else layer.data)  # z, y, x
    drawn = layer.colormap.map(data.reshape(-1)).reshape(*data.shape, 4)
    visible = drawn[..., 3] > 0
    assert np.array_equal(visible, np.isin(data, [SPHERE, BOX]))
    np.testing.assert_allclose(drawn[data == BOX][0], colours[1])
    np.testing.assert_allclose(layer.get_color(SPHERE), colours[0])
    assert layer.get_color(3)[3] == 0
    # What napari sends to the GPU for the slice on screen (2-D and 3-D): texture values
    # whose colours are the selected ones, transparent elsewhere.
    for ndisplay in (2, 3):
        viewer.dims.ndisplay = ndisplay
        sliced = layer._slice.image  # noqa: SLF001 - the slice napari draws
        texture, raw = np.asarray(sliced.view), np.asarray(sliced.raw)
        palette = layer.colormap._values_mapping_to_minimum_values_set()[1]  # noqa: SLF001
        shown = np.array([palette[int(t)][3] > 0 for t in texture.reshape(-1)])
        assert np.array_equal(shown.reshape(raw.shape), np.isin(raw, [SPHERE, BOX]))
    # Selecting others, then nothing, puts the layer's own colours back.
    show_only(layer, [3])
    assert showing_only(layer) == (3,) and original_colormap(layer) is own
    show_all(layer)
    assert layer.colormap is own and showing_only(layer) is None
    show_only(layer, [SPHERE])
    show_only(layer, [])
    assert layer.colormap is own
