"""Key-value storage under a volume: local files, memory, GCS, S3 and HTTP(S).

``open_kvstore`` turns a TensorStore kvstore spec or URL (parsed by :mod:`.url`) into a
:class:`KvStore`; :mod:`.base` is the interface and its capability flags, :mod:`.retry`
the network stores' retry policy and timeouts. docs/stores.md describes each store.
"""

from .base import NO_VALUE, UNVERSIONED, Deliver, Generation, KvStore, RangeRequest
from .file import FileKvStore
from .fsspec import FsspecKvStore
from .gcs import GcsKvStore
from .http import HttpKvStore
from .memory import MemoryKvStore
from .open import open_kvstore
from .remote import RemoteKvStore
from .retry import RetryPolicy, Timeouts
from .s3 import S3KvStore

__all__ = [
    "KvStore",
    "NO_VALUE",
    "UNVERSIONED",
    "Generation",
    "RetryPolicy",
    "Timeouts",
    "RemoteKvStore",
    "RangeRequest",
    "Deliver",
    "open_kvstore",
    "FsspecKvStore",
    "FileKvStore",
    "MemoryKvStore",
    "GcsKvStore",
    "S3KvStore",
    "HttpKvStore",
]
