"""The reader's probe: is a path or URL a Precomputed volume? One ``info`` read, bounded.

napari calls the probe on its UI thread for every folder, ``info`` file and URL the user
opens, so it must be quick and must say why when it cannot tell:

* something that is not a volume (a folder without ``info``, JSON of another kind, a
  file another plugin reads) is :data:`None`: napari offers it to other readers;
* something that is, or claims to be, a volume (a folder or URL whose ``info`` is a
  volume's, or a URL that cannot be reached, is forbidden, or has no ``info``) is a
  :class:`Probed` with either the parsed metadata (the reader opens it without reading
  ``info`` again) or the error to show, which names the URL and says what to do;
* the whole probe of a URL runs within a time budget, :func:`probe_timeout` seconds
  (``$NAPARI_PRECOMPUTED_PROBE_TIMEOUT``, default 5): without a network it fails within
  that time instead of freezing the window while credentials are looked up and requests
  are retried.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, replace
from typing import Any

import precomputed
from precomputed import KvStore, MultiscaleMetadata, NotFoundError, PrecomputedError
from precomputed.errors import PermissionDeniedError, UnavailableError
from precomputed.kvstore import RemoteKvStore, Timeouts
from precomputed.kvstore.url import parse_url
from precomputed.spec import parse_spec

__all__ = [
    "PROBE_TIMEOUT_ENV",
    "DEFAULT_PROBE_TIMEOUT",
    "Probed",
    "probe",
    "probe_timeout",
]

log = logging.getLogger("napari_precomputed")

#: The environment variable holding the probe's time budget in seconds.
PROBE_TIMEOUT_ENV = "NAPARI_PRECOMPUTED_PROBE_TIMEOUT"
DEFAULT_PROBE_TIMEOUT = 5.0
#: An ``info`` larger than this is not a volume's (they are a few KiB).
MAX_INFO_BYTES = 16 * 1024 * 1024
_MULTISCALE_TYPE = "neuroglancer_multiscale_volume"
#: How a napari user gives a store's options (fsspec reads FSSPEC_<PROTOCOL>).
_FSSPEC_ENV = {
    "gcs": """FSSPEC_GS='{"token": "anon"}' (a public bucket) or """
    """FSSPEC_GS='{"token": "/path/key.json"}'""",
    "s3": """FSSPEC_S3='{"anon": true}' (a public bucket) or AWS_PROFILE=name""",
    "http": """FSSPEC_HTTP='{"headers": {"Authorization": "Bearer ..."}}'""",
}


@dataclass
class Probed:
    """A path that is (or claims to be) a volume: what to open (``source``), the store
    its ``info`` came from (URLs), the parsed ``metadata``, or the ``error`` to show."""

    source: str
    kvstore: KvStore | None = None
    metadata: MultiscaleMetadata | None = None
    error: PrecomputedError | None = None


def probe_timeout() -> float:
    """The probe's time budget: ``$NAPARI_PRECOMPUTED_PROBE_TIMEOUT`` seconds, else 5."""
    raw = os.environ.get(PROBE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_PROBE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        log.warning(
            "napari-precomputed: %s=%r is not a number of seconds > 0; using %g s",
            PROBE_TIMEOUT_ENV,
            raw,
            DEFAULT_PROBE_TIMEOUT,
        )
        return DEFAULT_PROBE_TIMEOUT
    return value


def probe(path: str) -> Probed | None:
    """What the reader should do with ``path`` (see the module docstring). Never raises."""
    try:
        return _probe(path)
    except PrecomputedError as e:  # a volume's problem: the reader reports it
        return Probed(path.strip(), error=e)
    except Exception as e:  # anything else: not ours to read
        log.debug("napari-precomputed: %s is not readable as Precomputed: %s", path, e)
        return None


def _probe(path: str) -> Probed | None:
    path = path.strip()
    if not path:
        return None
    try:
        root, volume_path = parse_url(path)  # the driver's URL parser: other schemes raise
    except PrecomputedError:
        return None
    if root["driver"] == "file":
        return _probe_local(os.sep + volume_path)  # absolute, ~ expanded, file:// decoded
    return _probe_remote(path)


# -- local folders ----------------------------------------------------------------------------


def _probe_local(local: str) -> Probed | None:
    if os.path.basename(local.rstrip(os.sep)) == "info" and os.path.isfile(local):
        local = os.path.dirname(local.rstrip(os.sep))
    info = os.path.join(local, "info")
    if not os.path.isdir(local) or not os.path.isfile(info):
        return None
    if os.path.getsize(info) > MAX_INFO_BYTES:
        return None
    try:
        with open(info, "rb") as f:
            data = f.read()
    except PermissionError as e:
        raise PermissionDeniedError(
            f"cannot read {info}: permission denied ({e.strerror}). Ask the owner of the "
            "folder for read access, or open a copy."
        ) from e
    meta = _volume_metadata(data, info)
    return None if meta is None else Probed(local, metadata=meta)


# -- URLs ---------------------------------------------------------------------------------------


def _probe_remote(path: str) -> Probed | None:
    source = path.rstrip("/")
    if source.endswith("/info"):
        source = source[: -len("/info")]
    budget = probe_timeout()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = _read_remote_info(source, budget)
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e

    worker = threading.Thread(target=work, name="napari-precomputed-probe", daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        raise UnavailableError(
            f"{source}/info: no answer within {budget:g} s, the time napari-precomputed "
            f"waits before giving up (${PROBE_TIMEOUT_ENV}). Check the network connection "
            f"and the URL; on a slow connection set {PROBE_TIMEOUT_ENV} to more seconds."
        )
    if "error" in outcome:
        raise _explained(outcome["error"], source, path, budget)
    kv, data = outcome["value"]
    if data is None:
        if _names_a_file(path):
            return None  # e.g. https://host/image.tif: another plugin's file
        raise NotFoundError(
            f"{source}/info does not exist: there is no Precomputed volume at {source}. "
            "Check the URL: it names the volume's folder, the one that holds its info file."
        )
    meta = _volume_metadata(data, source + "/info")
    return None if meta is None else Probed(source, kvstore=kv, metadata=meta)


def _read_remote_info(source: str, budget: float) -> tuple[KvStore, bytes | None]:
    """Open the store and read ``info``, every request within ``budget`` seconds; the store
    keeps its own retries and timeouts for what the reader reads later."""
    req = parse_spec(source)
    kv = precomputed.open_kvstore(req.kvstore, **(req.storage_options or {}))
    if not isinstance(kv, RemoteKvStore):
        return kv, kv.read(req.path + "info")
    retries, timeouts = kv.retries, kv.timeouts
    kv.retries = replace(retries, total_timeout=min(retries.total_timeout, budget))
    kv.timeouts = Timeouts(connect=min(timeouts.connect, budget), read=min(timeouts.read, budget))
    try:
        return kv, kv.read(req.path + "info")
    finally:
        kv.retries, kv.timeouts = retries, timeouts


def _names_a_file(path: str) -> bool:
    """A URL whose last component has a file extension (``image.tif``) and no Precomputed
    marker: a missing ``info`` there means the URL is some other plugin's file."""
    if path.startswith("precomputed://") or path.rstrip("/").endswith("/info"):
        return False
    last = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return bool(os.path.splitext(last)[1])


def _explained(error: BaseException, source: str, path: str, budget: float) -> BaseException:
    """The driver's error, with what to do where the driver's message does not say it."""
    if not isinstance(error, PrecomputedError):
        return error  # not a volume's problem (probe() treats it as "not ours")
    message = str(error).rstrip(". ")
    if isinstance(error, UnavailableError):
        message += (
            f". napari-precomputed could not reach {source} within {budget:g} s (the time "
            f"it waits, ${PROBE_TIMEOUT_ENV}): check the network connection and that a "
            "server answers at that address."
        )
    elif isinstance(error, NotFoundError):
        message += f". Check the URL {path}: it names the volume's folder."
    elif isinstance(error, PermissionDeniedError):
        driver = parse_url(source)[0]["driver"]
        example = _FSSPEC_ENV.get(driver)
        if example is None:
            return error
        message += (
            ". napari passes no storage_options: give them through fsspec's configuration "
            f"instead, e.g. start napari with {example} in the environment (docs/napari.md)."
        )
    else:
        return error
    out = type(error)(message, member_path=error.member_path)
    out.__cause__ = error
    return out


# -- the info itself ------------------------------------------------------------------------


def _volume_metadata(data: bytes, where: str) -> MultiscaleMetadata | None:
    """The metadata when ``data`` is a volume's ``info``; None for other JSON or bytes.
    A volume ``info`` that cannot be opened raises the driver's error naming ``where``."""
    obj = _json_object(data)
    if obj is None or not _looks_like_volume(obj):
        return None
    return MultiscaleMetadata.from_json(obj, key=where)


def _json_object(data: bytes) -> dict[str, Any] | None:
    if len(data) > MAX_INFO_BYTES:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _looks_like_volume(obj: dict[str, Any]) -> bool:
    if "@type" in obj:
        return obj["@type"] == _MULTISCALE_TYPE
    return isinstance(obj.get("scales"), list)
