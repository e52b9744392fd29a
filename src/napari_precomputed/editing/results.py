"""What a commit of an edit session did, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from precomputed import PrecomputedError
from precomputed.chunkstore import CommitStats

__all__ = ["ChunkConflict", "CommitResult", "CommitError", "RemeshResult", "plural"]


@dataclass
class ChunkConflict:
    """A chunk both this session and another writer changed since the session read it.

    The chunk was merged voxel by voxel inside the conditional write that replaced the
    other writer's version: the other writer's values where this session did not paint,
    this session's where it did. ``voxels`` counts the voxels both changed to different
    values: the later commit (this one) wins them, and reports them here; the earlier
    writer's values there are overwritten."""

    position: tuple[int, int, int]
    key: str
    voxels: int


@dataclass
class RemeshResult:
    """What re-meshing the segments of a commit did (after the edits were stored: a
    failure here loses nothing of the commit)."""

    #: The segments whose meshes were regenerated (or deleted: no voxel left).
    segment_ids: list[int] = field(default_factory=list)
    #: The scale the meshes were made from.
    scale_index: int = 0
    #: ``((x0, y0, z0), (x1, y1, z1))`` voxels of that scale meshed, None: the whole scale.
    region: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    #: What the mesh writer did (``precomputed.meshes.MeshWriteStats``), None on failure.
    stats: Any = None
    #: Why nothing was re-meshed although segments were touched (no error).
    skipped: str | None = None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        n = len(self.segment_ids)
        if self.error is not None:
            return f"re-meshing {n} segment{plural(n)} failed: {self.error}"
        if self.skipped:
            return f"not re-meshed: {self.skipped}"
        return f"{n} segment{plural(n)} re-meshed in {self.seconds:.2f} s"


@dataclass
class CommitResult:
    """What one :meth:`EditSession.commit` did."""

    #: Chunks of the edited scale stored (written or, when all zero, deleted).
    chunks_written: int = 0
    chunks_deleted: int = 0
    #: Shard files (or unsharded chunk keys) of the edited scale rewritten.
    shards_written: int = 0
    #: Whether the edited scale is sharded.
    sharded: bool = False
    #: Dirty chunks identical to what they were based on (edits undone): not written.
    unchanged: int = 0
    conflicts: list[ChunkConflict] = field(default_factory=list)
    #: Storage keys written at the edited scale.
    keys: list[str] = field(default_factory=list)
    stats: CommitStats = field(default_factory=CommitStats)
    #: Scale index -> what updating that coarser scale wrote.
    downsampled: dict[int, CommitStats] = field(default_factory=dict)
    seconds: float = 0.0
    #: Labels (not 0) the stored edits changed: old and new values of the changed voxels.
    touched_ids: list[int] = field(default_factory=list)
    #: The re-meshing of ``touched_ids`` after the commit, when it ran.
    remesh: RemeshResult | None = None

    @property
    def conflicting_voxels(self) -> int:
        """Voxels this commit and another writer both changed, to different labels: they
        hold this commit's labels now (the later commit wins)."""
        return sum(c.voxels for c in self.conflicts)

    def summary(self) -> str:
        text = self._stored_summary()
        if self.remesh is not None and (self.remesh.segment_ids or self.remesh.error):
            text += "; " + self.remesh.summary()
        return text

    def _stored_summary(self) -> str:
        if not (self.chunks_written or self.chunks_deleted or self.downsampled):
            text = "nothing to store"
            if self.unchanged:
                text += f" ({self.unchanged} chunk{plural(self.unchanged)} back to original)"
            return text
        n = self.chunks_written + self.chunks_deleted
        unit = "shard" if self.sharded else "chunk file"
        parts = [
            f"{n} chunk{plural(n)} stored in {self.shards_written} {unit}{plural(self.shards_written)}"
        ]
        if self.downsampled:
            files = sum(s.groups_written + s.groups_deleted for s in self.downsampled.values())
            parts.append(f"{len(self.downsampled)} coarser scale{plural(len(self.downsampled))} "
                         f"updated ({files} file{plural(files)})")  # fmt: skip
        if self.conflicts:
            n = len(self.conflicts)
            text = f"{n} chunk{plural(n)} also changed by another writer (merged"
            voxels = self.conflicting_voxels
            if voxels:
                text += f"; {voxels} voxel{plural(voxels)} both changed keep this commit's labels"
            parts.append(text + ")")
        return ", ".join(parts) + f" in {self.seconds:.2f} s"


def plural(n: int) -> str:
    """ "s" unless ``n`` is one: ``f"{n} chunk{plural(n)}"``."""
    return "" if n == 1 else "s"


class CommitError(PrecomputedError):
    """A commit failed; every edit that was not stored is still in the session."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause
