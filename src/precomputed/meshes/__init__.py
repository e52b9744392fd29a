"""Meshes of segmentations: the two Precomputed mesh formats, read and written.

``precomputed.meshes.open(volume_or_url)`` returns a :class:`MeshSource`:
``.get(segment_id, lod=0)`` -> :class:`Mesh` (vertices float32 ``(n, 3)`` in nm, faces
uint32 ``(m, 3)``), ``.coarsest(id)``, ``.lods(id)``, ``.get_many(ids, lod)``.

``precomputed.meshes.write(volume, sharding=...)`` generates (zmesh) and writes
multi-resolution meshes; ``remesh(volume, ids)`` redoes some segments after an edit;
``generate(...)`` yields the meshes without writing them.

Formats and their byte layouts: docs/format/meshes.md. Needs the ``meshes`` extra
(DracoPy for multi-resolution meshes, zmesh to generate them).
"""

from .generate import Progress, generate
from .info import LEGACY_TYPE, MULTILOD_TYPE, MeshInfo, parse_mesh_info
from .manifest import MultiLodManifest
from .mesh import Mesh
from .reader import LegacyMeshSource, MeshSource, MultiLodMeshSource, open
from .writer import LodOptions, MeshWriteStats, MultiLodWriter, choose_mesh_sharding, remesh, write

__all__ = [
    "LEGACY_TYPE",
    "MULTILOD_TYPE",
    "LegacyMeshSource",
    "LodOptions",
    "Mesh",
    "MeshInfo",
    "MeshSource",
    "MeshWriteStats",
    "MultiLodManifest",
    "MultiLodMeshSource",
    "MultiLodWriter",
    "Progress",
    "choose_mesh_sharding",
    "generate",
    "open",
    "parse_mesh_info",
    "remesh",
    "write",
]
