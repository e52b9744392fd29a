"""Sources that cannot be written, and what can be done with their edits instead.

A segmentation read over HTTP, or from a folder the user may not write, can still be
edited in napari, but no commit can ever store the edits. :func:`read_only_reason` says
so when the session opens (the edit dock shows it at once), :func:`commit_failed_message`
words a failed commit without promising that committing again could help, and
:func:`save_edits_as_volume` writes the edited region to a new volume with the source
scale's geometry (size, voxel offset, resolution, chunking, encoding), so it overlays the
source exactly, in napari and in Neuroglancer.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from precomputed import Volume
from precomputed.create import create_volume
from precomputed.errors import ReadOnlyError
from precomputed.kvstore import FileKvStore

from .results import plural

__all__ = ["read_only_reason", "commit_failed_message", "save_edits_as_volume", "suggest_copy_path"]


def read_only_reason(volume: Volume) -> str | None:
    """Why edits of ``volume`` can never be committed (None: as far as we can tell
    without writing, they can; cloud permissions show only at the first write)."""
    kv = volume.kvstore
    if kv.read_only:
        where = kv.url + volume.path
        if kv.url.startswith(("http://", "https://")):
            return f"{where} is read over HTTP(S), which cannot write"
        return f"{where} is opened read-only"
    if isinstance(kv, FileKvStore):
        folder = os.path.join(kv.root, volume.path, volume.scale.key)
        while not os.path.isdir(folder) and folder != os.path.dirname(folder):
            folder = os.path.dirname(folder)  # the scale folder may not exist yet
        if not os.access(folder, os.W_OK):
            return f"you may not write the folder {folder}"
    return None


def commit_failed_message(error: BaseException, remaining: int) -> str:
    """The text of a failed commit: what failed, that nothing is lost, what to do."""
    kept = f"nothing is lost: {remaining} edited chunk{plural(remaining)} " + (
        "remains" if remaining == 1 else "remain"
    ) + " in the session"
    if isinstance(error, (ReadOnlyError, PermissionError)):
        return (
            f"Commit failed: {error} -- {kept}. The source cannot be written: save the "
            "edits as a new volume instead"
        )
    return f"Commit failed: {error} -- {kept}; commit again to retry"


def suggest_copy_path(volume: Volume, region: Any) -> str:
    """A new local folder for a copy of the edits (next to the user's home)."""
    src = volume.kvstore.url.rstrip("/") + "/" + volume.path.rstrip("/")
    name = src.rstrip("/").rsplit("/", 1)[-1] or "volume"
    base = os.path.join(os.path.expanduser("~"), f"{name}-edited")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def save_edits_as_volume(session: Any, destination: str) -> Volume:
    """Write the session's region, with its edits, as a new volume at ``destination``.

    The new volume has one scale with the edited scale's geometry; voxels outside the
    region are not stored (they read as 0). The edits stay in the session. Raises the
    driver's error (e.g. :class:`~precomputed.AlreadyExistsError` for a destination that
    already holds a volume, which is never touched)."""
    vol: Volume = session.volume
    meta, scale = vol.metadata, vol.scale
    scale_metadata: dict[str, Any] = {
        "key": scale.key,
        "size": list(scale.size),
        "voxel_offset": list(scale.voxel_offset),
        "resolution": list(scale.resolution),
        "chunk_size": list(vol.chunk_layout.read_chunk[:3]),
        "encoding": scale.encoding,
    }
    if scale.encoding == "compressed_segmentation":
        scale_metadata["compressed_segmentation_block_size"] = list(
            scale.compressed_segmentation_block_size
        )
    for member in ("jpeg_quality", "png_level"):
        if getattr(scale, member) is not None:
            scale_metadata[member] = getattr(scale, member)
    if scale.sharding is not None:
        scale_metadata["sharding"] = scale.sharding.to_json()
    out = create_volume(
        destination,
        {"type": meta.type, "data_type": meta.data_type, "num_channels": 1},
        scale_metadata,
    )
    r = session.region
    step = max(1, int(scale_metadata["chunk_size"][2]))
    (x0, y0, z0), (x1, y1, z1) = r.start, r.stop
    for z in range(z0, z1, step):  # a slab of chunks at a time: bounded memory
        zz = min(z1, z + step)
        zyx = np.asarray(session.data[z - z0 : zz - z0])
        out[x0:x1, y0:y1, z:zz, :] = zyx.transpose(2, 1, 0)[..., None]
    return out
