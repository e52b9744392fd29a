"""The triangle mesh type every reader returns and every writer takes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["Mesh"]


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh: ``vertices`` float32 ``(n, 3)`` xyz (nm, in the volume's world
    coordinates when read), ``faces`` uint32 ``(m, 3)`` indices into ``vertices``."""

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        v = np.ascontiguousarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        f = np.ascontiguousarray(self.faces, dtype=np.uint32).reshape(-1, 3)
        if f.size and int(f.max()) >= v.shape[0]:
            raise InvalidArgumentError(
                f"face index {int(f.max())} is out of range for {v.shape[0]} vertices"
            )
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)

    @classmethod
    def empty(cls) -> Mesh:
        return cls(np.empty((0, 3), np.float32), np.empty((0, 3), np.uint32))

    @classmethod
    def concatenate(cls, meshes: Iterable[Mesh]) -> Mesh:
        """One mesh of all ``meshes`` (vertices stacked, faces re-indexed; no merging)."""
        meshes = list(meshes)
        if not meshes:
            return cls.empty()
        if len(meshes) == 1:
            return meshes[0]
        counts = np.cumsum([0] + [m.vertices.shape[0] for m in meshes[:-1]], dtype=np.uint64)
        faces = np.concatenate(
            [m.faces.astype(np.uint64) + c for m, c in zip(meshes, counts, strict=True)]
        )
        if faces.size and int(faces.max()) > np.iinfo(np.uint32).max:
            raise InvalidArgumentError("the concatenated mesh has more than 2**32 vertices")
        return cls(np.concatenate([m.vertices for m in meshes]), faces.astype(np.uint32))

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def __bool__(self) -> bool:
        return self.num_faces > 0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min xyz, max xyz)`` of the vertices (NaNs for an empty mesh)."""
        if not self.num_vertices:
            nan = np.full(3, np.nan, np.float32)
            return nan, nan.copy()
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def deduplicated(self) -> Mesh:
        """Identical vertices merged (e.g. the copies on fragment boundaries), unused
        vertices dropped and faces that became degenerate removed."""
        if not self.num_vertices:
            return self
        used = np.unique(self.faces)
        unique, inverse = np.unique(self.vertices[used], axis=0, return_inverse=True)
        remap = np.zeros(self.num_vertices, dtype=np.uint32)
        remap[used] = inverse.reshape(-1)
        faces = remap[self.faces]
        ok = (
            (faces[:, 0] != faces[:, 1])
            & (faces[:, 1] != faces[:, 2])
            & (faces[:, 0] != faces[:, 2])
        )
        return Mesh(unique, faces[ok])

    def __repr__(self) -> str:
        return f"Mesh({self.num_vertices} vertices, {self.num_faces} faces)"
