"""Key-value storage under a volume: local files, memory, GCS, S3 and HTTP(S).

``open_kvstore`` turns a TensorStore kvstore spec or URL into a :class:`KvStore`.
"""

from .base import NO_VALUE, Generation, KvStore, RangeRequest
from .fsspec_store import FsspecKvStore, GcsKvStore, HttpKvStore, S3KvStore
from .local import FileKvStore
from .memory import MemoryKvStore
from .open import open_kvstore

__all__ = [
    "KvStore",
    "NO_VALUE",
    "Generation",
    "RangeRequest",
    "open_kvstore",
    "FsspecKvStore",
    "FileKvStore",
    "MemoryKvStore",
    "GcsKvStore",
    "S3KvStore",
    "HttpKvStore",
]
