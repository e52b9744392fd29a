"""Generating meshes from a segmentation (zmesh, block by block): the geometry lies on the
label boundary, blocks stitch into watertight surfaces that enclose the label's volume;
segment, region and progress options."""

from __future__ import annotations

import numpy as np
import pytest

from precomputed import meshes
from precomputed.errors import InvalidArgumentError

pytest.importorskip("zmesh")

from mesh_oracles import (  # noqa: E402
    IDS,
    OFFSET,
    RESOLUTION,
    enclosed_volume,
    near_boundary,
    segmentation,
    voxel_coords,
    watertight,
)

# -- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [(128, 128, 128), (16, 16, 16)])
def test_generated_meshes_lie_on_the_label_boundary(block: tuple[int, int, int]) -> None:
    seg = segmentation()
    got = dict(meshes.generate(seg, resolution=RESOLUTION, voxel_offset=OFFSET, block_shape=block))
    assert sorted(got) == sorted(IDS)
    for sid, mesh in got.items():
        p = voxel_coords(mesh)
        assert near_boundary(seg, sid, p).all(), sid
        assert watertight(mesh), sid  # blocks stitched, region faces closed
        # The surface encloses the label's volume (up to the chamfered edges).
        voxels = (seg == sid).sum() * np.prod(RESOLUTION)
        assert enclosed_volume(mesh) == pytest.approx(voxels, rel=0.15), sid


def test_generate_filters_segments_and_regions_and_reports_progress() -> None:
    seg = segmentation()
    calls: list[tuple[str, int, int]] = []
    got = dict(
        meshes.generate(
            seg,
            resolution=RESOLUTION,
            voxel_offset=OFFSET,
            segment_ids=[7, 3],
            block_shape=(32, 32, 16),
            progress=lambda *a: calls.append(a),
        )
    )
    assert sorted(got) == [3, 7]
    stages = {c[0] for c in calls}
    assert stages == {"scan", "mesh"} and calls[-1] == ("mesh", 12, 12)
    # A region: only the box's lower half, closed at the cut.
    box = np.array([40, 10, 5]) + OFFSET
    region = (np.array(OFFSET), np.array(OFFSET) + [64, 64, 20])
    half = dict(meshes.generate(seg, resolution=RESOLUTION, voxel_offset=OFFSET, region=region))
    m = half[12345678901]
    p = voxel_coords(m)
    assert p[:, 2].max() == pytest.approx(20, abs=1e-3) and watertight(m)
    assert (p.min(0) >= box - np.array(OFFSET) - 1e-3).all()
    with pytest.raises(InvalidArgumentError, match="region"):
        list(meshes.generate(seg, resolution=RESOLUTION, region=((0, 0, 0), (65, 1, 1))))
    with pytest.raises(InvalidArgumentError, match="integer labels"):
        list(meshes.generate(seg.astype(np.float32), resolution=RESOLUTION))
    with pytest.raises(InvalidArgumentError, match="resolution"):
        list(meshes.generate(seg))


