"""Neuroglancer Precomputed volumes: a TensorStore-compatible driver in Python.

``precomputed.open(spec_or_url)`` opens one scale as a lazy :class:`Volume`; see the
README and docs/ for the spec, URLs, transactions and sharding.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from .cache import ChunkCache
from .context import Context, default_context
from .dask import store, to_dask
from .driver import open, open_scales, read_info
from .errors import (
    AlreadyExistsError,
    ConditionFailedError,
    CorruptDataError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PrecomputedError,
    ReadOnlyError,
    UnimplementedError,
)
from .internal.recycle import set_recycling_limit
from .kvstore import KvStore, open_kvstore
from .metadata import MultiscaleMetadata, ScaleMetadata
from .schema import ChunkLayout
from .sharding import ShardingSpec
from .transaction import Transaction
from .views import ZyxArray
from .volume import IndexDomain, Volume, read_many

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = _distribution_version("napari-precomputed")
except PackageNotFoundError:  # pragma: no cover - imported from a tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AlreadyExistsError",
    "ChunkCache",
    "ChunkLayout",
    "ConditionFailedError",
    "Context",
    "CorruptDataError",
    "FailedPreconditionError",
    "IndexDomain",
    "InvalidArgumentError",
    "KvStore",
    "MultiscaleMetadata",
    "NotFoundError",
    "OutOfRangeError",
    "PrecomputedError",
    "ReadOnlyError",
    "ScaleMetadata",
    "ShardingSpec",
    "Transaction",
    "UnimplementedError",
    "Volume",
    "ZyxArray",
    "default_context",
    "open",
    "open_kvstore",
    "open_scales",
    "read_info",
    "read_many",
    "set_recycling_limit",
    "store",
    "to_dask",
]
