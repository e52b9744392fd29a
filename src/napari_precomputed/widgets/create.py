"""The *Create volume* widget: a face on :mod:`precomputed.create`.

Two modes:

* **New volume** -- every member of TensorStore's ``multiscale_metadata`` (type, data
  type, channels) and ``scale_metadata`` (key, size, voxel offset, resolution, chunk
  size, encoding and its parameters, sharding). Choosing an Image or Labels layer fills
  them from the layer (shape, dtype, scale in nm, translate); *Create* writes the
  layer's data and builds the requested pyramid levels.
* **Add scale** -- loads an existing volume's ``info`` and proposes the next scale of a
  chosen source scale for a factor such as ``2, 2, 1`` (CloudVolume's geometry); *Create*
  adds it and fills it by downsampling.

Every change is validated by the driver's own rules (:func:`precomputed.create.plan_scale`,
i.e. ``parse_spec`` + ``create_scale``); the message appears under the field it concerns
(the error's ``member_path`` names it),
*Create* is disabled while anything is invalid, and the preview shows the ``info`` that
will be written and the new scale's key. Creation runs in a worker thread with a napari
progress bar; *Cancel* (or the progress bar's cancel button) stops it, and a cancelled or
failed creation removes what it wrote (if even that fails, *Delete incomplete* finishes
the job from the volume's ``INCOMPLETE`` marker).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
    TextEdit,
)
from magicgui.widgets.bases import CategoricalWidget, ValueWidget
from qtpy.QtCore import QEvent, QObject, Signal

from precomputed import metadata as md
from precomputed.create import (
    DEFAULT_BLOCK_BYTES,
    Cancelled,
    IncompleteVolumeError,
    ScalePlan,
    add_scale,
    create_volume,
    discard_incomplete,
    find_incomplete,
    next_scale_metadata,
    plan_pyramid,
    plan_scale,
)
from precomputed.driver import read_info
from precomputed.errors import AlreadyExistsError, PrecomputedError
from precomputed.kvstore import open_kvstore
from precomputed.sharding import choose_sharding
from precomputed.spec import parse_spec

from .._writer import LayerVolumeSpec, layer_volume_spec

__all__ = ["CreateVolumeWidget"]

PLUGIN = "napari-precomputed"
NEW, ADD = "new", "add"
SHARDING_MODES = ("none", "automatic", "explicit")
_ERROR_STYLE = "color: #e05555;"
_NOTE_STYLE = "color: #8a8a8a;"

# Spec member name -> widget field that shows its messages.
_MEMBER_FIELDS = {
    "type": "type",
    "data_type": "data_type",
    "num_channels": "num_channels",
    "key": "key",
    "size": "size",
    "voxel_offset": "voxel_offset",
    "resolution": "resolution",
    "chunk_size": "chunk_size",
    "encoding": "encoding",
    "jpeg_quality": "jpeg_quality",
    "png_level": "png_level",
    "compressed_segmentation_block_size": "block_size",
    "sharding": "sharding",
    "preshift_bits": "preshift_bits",
    "minishard_bits": "minishard_bits",
    "shard_bits": "shard_bits",
    "hash": "hash",
    "minishard_index_encoding": "minishard_index_encoding",
    "data_encoding": "data_encoding",
}
# Field in error -> scale_metadata members to leave out to look for further errors.
_ENCODING_MEMBERS = ("encoding", "jpeg_quality", "png_level", "compressed_segmentation_block_size")
_DROP: dict[str, tuple[str, ...]] = {
    "key": ("key",),
    "size": ("size", "voxel_offset"),
    "voxel_offset": ("voxel_offset",),
    "resolution": ("resolution",),
    "chunk_size": ("chunk_size",),
    "encoding": _ENCODING_MEMBERS,
    "jpeg_quality": ("jpeg_quality",),
    "png_level": ("png_level",),
    "block_size": ("compressed_segmentation_block_size",),
    **{
        name: ("sharding",)
        for name in (
            "sharding",
            "preshift_bits",
            "minishard_bits",
            "shard_bits",
            "hash",
            "minishard_index_encoding",
            "data_encoding",
        )
    },
}


def field_for_error(error: BaseException) -> str:
    """The widget field a driver error concerns: the innermost member of its
    :attr:`~precomputed.errors.PrecomputedError.member_path` that has a field
    (``"general"`` if none does)."""
    for name in reversed(getattr(error, "member_path", ())):
        if isinstance(name, str) and name in _MEMBER_FIELDS:
            return _MEMBER_FIELDS[name]
    return "general"


def _short(error: BaseException) -> str:
    """The message without its member-path prefixes (``Error parsing object member
    "..."``: it is shown next to the member's field)."""
    short = str(error)
    for name in getattr(error, "member_path", ()):
        prefix = f'Error parsing object member "{name}": '
        if not (isinstance(name, str) and short.startswith(prefix)):
            break
        short = short[len(prefix) :]
    if short == "domain must be specified":
        short = "required: the volume's size in voxels (x, y, z)"
    return gui_terms(short)


_RANGE = re.compile(r"Expected integer in the range \[(-?\d+), (-?\d+)\], but received: (\S+)")
#: Bounds this large are the parser's limits, not something a user chooses.
_HUGE = 2**53


def gui_terms(text: str, destination: str = "") -> str:
    """A driver message in the form's words: integer ranges as "a whole number from a
    to b" (no 64-bit limits), no Python keywords, and the destination as typed (a local
    path keeps its leading slash, which the kvstore path drops)."""

    def ranged(m: re.Match[str]) -> str:
        lo, hi, got = int(m[1]), int(m[2]), m[3].rstrip(".,")
        if hi >= _HUGE:
            return f"must be a whole number of at least {lo}, not {got}"
        return f"must be a whole number from {lo} to {hi}, not {got}"

    text = _RANGE.sub(ranged, text)
    text = re.sub(
        r"Error parsing value at position ([0-2]): ", lambda m: "xyz"[int(m[1])] + " ", text
    )
    text = re.sub(r"\s*\(?pass delete_existing=True to replace it\)?", "", text)
    dest = destination.strip()
    if dest.startswith("/"):
        bare = dest.strip("/")
        text = re.sub(r"(?<![/\w.])" + re.escape(bare), "/" + bare, text)
    return text


def _parse_vec(text: str, kind: type) -> list[Any] | None:
    """``"64, 64, 16"`` -> ``[64, 64, 16]``; empty -> ``None`` (the member is absent)."""
    text = text.strip().strip("[]()")
    if not text:
        return None
    parts = [p for p in re.split(r"[,\s]+", text) if p]
    if len(parts) != 3:
        raise ValueError(f"expected 3 values (x, y, z), got {len(parts)}")
    out: list[Any] = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"{p!r} is not a number") from None
        if kind is int:
            if not v.is_integer():
                raise ValueError(f"{p!r} is not an integer")
            out.append(int(v))
        else:
            out.append(v)
    return out


def _fmt(value: Any) -> str:
    v = float(value)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _fmt_vec(values: Any) -> str:
    return "" if values is None else ", ".join(_fmt(v) for v in values)


def _wrapping_label() -> Label:
    """A Label whose text wraps (magicgui's labels have a fixed size, which clips it)."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
    return label


def _dumps(value: Any, indent: int = 0) -> str:
    """JSON with one member per line but short arrays of numbers on one line."""
    pad = "  " * indent
    if isinstance(value, dict) and value:
        items = [
            f"{pad}  {json.dumps(k)}: {_dumps(v, indent + 1).lstrip()}"
            for k, v in sorted(value.items())
        ]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        if all(isinstance(v, list) for v in value):  # chunk_sizes: [[64,64,64]]
            return pad + json.dumps(value)
        items = [_dumps(v, indent + 1) for v in value]
        return pad + "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return pad + json.dumps(value)


#: Fields a new volume cannot do without (their errors wait for the first input).
_REQUIRED = ("size", "destination")


def _holds_volume(destination: str) -> str | None:
    """The ``info`` of a volume already at a local destination (None: none, or not
    local: a remote one is found when creating, without a request per keystroke)."""
    dest = destination.strip()
    if dest.startswith("file://"):
        dest = dest[len("file://") :]
    if "://" in dest or not dest:
        return None
    dest = os.path.expanduser(dest)
    if os.path.basename(dest.rstrip(os.sep)) == "info" and os.path.isfile(dest):
        return dest
    info = os.path.join(dest, "info")
    return info[: -len("/info")] if os.path.isfile(info) else None


class _FitWidth(QObject):
    """Keeps the scroll area as wide as the form's widest row, so nothing is cut off on
    the right whatever fonts and style the viewer applies (the form scrolls vertically
    only: its height may be anything)."""

    def __init__(self, owner: Container) -> None:
        super().__init__(owner.native)
        self.inner = owner.native
        self.outer = owner.root_native_widget
        self.inner.installEventFilter(self)
        self.fit()

    def fit(self) -> None:
        from qtpy.QtWidgets import QScrollArea

        if not isinstance(self.outer, QScrollArea):
            return
        scrollbar = self.outer.verticalScrollBar()
        bar = scrollbar.sizeHint().width() if scrollbar is not None else 16
        frame = 2 * self.outer.frameWidth()
        self.outer.setMinimumWidth(self.inner.minimumSizeHint().width() + bar + frame)

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:  # noqa: N802 (Qt API)
        if event is not None and event.type() in (
            QEvent.Type.LayoutRequest,
            QEvent.Type.StyleChange,
            QEvent.Type.FontChange,
            QEvent.Type.Show,
        ):
            self.fit()
        return False


class _Relay(QObject):
    """Carries progress from the worker thread to the UI thread (queued signal)."""

    progressed = Signal(int, int)


class CreateVolumeWidget(Container):
    """Create a Precomputed volume (from a layer or empty) or add a scale to one."""

    def __init__(self, napari_viewer: Any = None) -> None:
        super().__init__(labels=False, scrollable=False)
        # napari docks ``.native``, which for a scrollable magicgui container is the
        # form inside the scroll area: the scroll area is added here by hand, so the
        # dock holds it and the form scrolls instead of making the dock as tall as it.
        self.form: Container = Container(labels=True, scrollable=True)
        layout = self.native.layout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.form.root_native_widget)
        self.viewer = napari_viewer
        self.fields: dict[str, ValueWidget] = {}
        self.messages: dict[str, Label] = {}
        self.rows: dict[str, Container] = {}
        self.errors: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self.plan: ScalePlan | None = None
        #: Bytes of source data per processed block (tests make it small).
        self.block_bytes = DEFAULT_BLOCK_BYTES
        self.busy = False
        self.last_error: BaseException | None = None
        self.last_result: Any = None
        self._existing: md.MultiscaleMetadata | None = None
        self._existing_dest: str | None = None
        self._layer_spec: LayerVolumeSpec | None = None
        self._layer_error: str | None = None
        self._scale_metadata: dict[str, Any] | None = None
        self._multiscale_metadata: dict[str, Any] | None = None
        self._updating = False
        self._cancel_event = threading.Event()
        self._worker: Any = None
        self._relay: _Relay | None = None
        self._pbar: Any = None
        self._incomplete_dest: str | None = None
        #: No input yet: missing required fields are notes, not red errors.
        self._pristine = True
        self._build()
        self._fit = _FitWidth(self.form)
        if napari_viewer is not None:
            events = napari_viewer.layers.events
            for name in ("inserted", "removed", "reordered"):
                getattr(events, name).connect(self._reset_layers)
        self.validate()

    # -- construction -------------------------------------------------------------------
    def _add_row(self, name: str, widget: ValueWidget, label: str) -> Container:
        msg = _wrapping_label()
        msg.visible = False
        row = Container(widgets=[widget, msg], labels=False, label=label)
        row.margins = (0, 0, 0, 0)
        self.fields[name] = widget
        self.messages[name] = msg
        self.rows[name] = row
        widget.changed.connect(partial(self._on_field_changed, name))
        self.form.append(row)
        return row

    def _choices_field(self, name: str) -> CategoricalWidget:
        widget = self.fields[name]
        assert isinstance(widget, CategoricalWidget), name
        return widget

    def _header(self, text: str) -> None:
        self.form.append(Label(value=f"<b>{text}</b>"))

    def _build(self) -> None:
        add = self._add_row
        add(
            "mode",
            RadioButtons(  # type: ignore[call-arg]  # magicgui types **kwargs without `value`
                choices=[("New volume", NEW), ("Add scale", ADD)],
                value=NEW,
                orientation="horizontal",
            ),
            "Mode",
        )
        dest = LineEdit(value="")
        dest.native.setPlaceholderText("folder, file:// or gs:// / s3:// URL")
        add("destination", dest, "Volume")
        self.load_button = PushButton(text="Load info")
        self.load_button.changed.connect(lambda *_: self.load_existing())
        self.form.append(self.load_button)
        add("layer", ComboBox(choices=self._layer_choices, value=None), "Fill from layer")
        add("source_scale", ComboBox(choices=[]), "Source scale")
        add("factor", LineEdit(value="2, 2, 1"), "Factor (x, y, z)")
        levels = SpinBox(value=1, min=1, max=17)
        levels.tooltip = "How many scales the volume gets, the full resolution included"
        add("levels", levels, "Pyramid levels")
        add("fill", CheckBox(value=True, text="Downsample the source into it"), "Data")

        self._header("Volume")
        add("type", ComboBox(choices=["image", "segmentation"], value="image"), "Type")
        add("data_type", ComboBox(choices=list(md.SUPPORTED_DTYPES), value="uint8"), "Data type")
        add("num_channels", SpinBox(value=1, min=1, max=2**31 - 1), "Channels")

        self._header("Scale")
        key = LineEdit(value="")
        key.native.setPlaceholderText("automatic: from the resolution")
        add("key", key, "Key")
        for name, default, hint, label in [
            ("size", "", "x, y, z voxels", "Size"),
            ("voxel_offset", "", "x, y, z (default 0, 0, 0)", "Voxel offset"),
            ("resolution", "", "x, y, z nm (default 1, 1, 1)", "Resolution (nm)"),
            ("chunk_size", "64, 64, 64", "x, y, z (empty: automatic)", "Chunk size"),
        ]:
            w = LineEdit(value=default)
            w.native.setPlaceholderText(hint)
            add(name, w, label)
        add("encoding", ComboBox(choices=list(md.ENCODINGS), value="raw"), "Encoding")
        add("jpeg_quality", SpinBox(value=75, min=0, max=100), "JPEG quality")
        add(
            "png_level",
            ComboBox(choices=[("default", None)] + [(str(i), i) for i in range(10)], value=None),
            "PNG level",
        )
        block = LineEdit(value="8, 8, 8")
        block.native.setPlaceholderText("x, y, z (empty: automatic)")
        add("block_size", block, "Block size")
        add("sharding", ComboBox(choices=list(SHARDING_MODES), value="none"), "Sharding")
        add(
            "shard_mib",
            FloatSpinBox(value=64.0, min=0.001, max=1e7, step=1.0),
            "Shard size (MiB)",
        )
        add("preshift_bits", SpinBox(value=0, min=0, max=64), "Preshift bits")
        add("minishard_bits", SpinBox(value=0, min=0, max=64), "Minishard bits")
        add("shard_bits", SpinBox(value=0, min=0, max=64), "Shard bits")
        add("hash", ComboBox(choices=["identity", "murmurhash3_x86_128"]), "Hash")
        add(
            "minishard_index_encoding",
            ComboBox(choices=["raw", "gzip"], value="gzip"),
            "Minishard index",
        )
        add("data_encoding", ComboBox(choices=["raw", "gzip"], value="gzip"), "Shard data")
        self.fields["shard_mib"].tooltip = "Target size of a shard, uncompressed"
        self.fields["block_size"].tooltip = "compressed_segmentation block size (x, y, z)"

        self._header("Result")
        self.key_label = _wrapping_label()
        self.form.append(self.key_label)
        self.preview = TextEdit(value="")
        self.preview.native.setReadOnly(True)
        self.preview.native.setMinimumHeight(120)
        self.preview.native.setMaximumHeight(300)
        self.form.append(self.preview)
        add("open_layer", CheckBox(value=True, text="Open as a layer when done"), "")
        msg = _wrapping_label()
        self.messages["general"] = msg
        self.form.append(msg)
        self.create_button = PushButton(text="Create")
        self.create_button.changed.connect(lambda *_: self.create())
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.delete_button = PushButton(text="Delete incomplete volume")
        self.delete_button.changed.connect(lambda *_: self.delete_incomplete())
        buttons = Container(
            widgets=[self.create_button, self.cancel_button, self.delete_button],
            layout="horizontal",
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        self.form.append(buttons)
        self.status = _wrapping_label()
        self.form.append(self.status)

    # -- public helpers (also what the tests drive) ---------------------------------------
    def field_value(self, name: str) -> Any:
        return self.fields[name].value

    def set_values(self, **values: Any) -> None:
        """Set several fields, validating once at the end."""
        self._pristine = False
        with self._batch():
            for name, v in values.items():
                self.fields[name].value = v
        self.validate()

    def is_shown(self, name: str) -> bool:
        """Whether a field's row (or a button: ``"delete_button"``) is shown, independent
        of the widget itself being on screen."""
        widget = self.rows[name] if name in self.rows else getattr(self, name)
        return not widget.native.isHidden()

    @property
    def mode(self) -> str:
        return self.fields["mode"].value

    @property
    def can_create(self) -> bool:
        return bool(self.create_button.enabled)

    # -- layers ------------------------------------------------------------------------------
    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("(none)", None)]
        if self.viewer is None:
            return out
        from napari.layers import Image, Labels

        for layer in self.viewer.layers:
            if isinstance(layer, (Image, Labels)):
                out.append((layer.name, layer))
        return out

    def _reset_layers(self, *_: Any) -> None:
        self._choices_field("layer").reset_choices()

    def fill_from_layer(self, layer: Any) -> None:
        """Fill the metadata fields from an Image or Labels layer (``None`` clears)."""
        self._layer_spec = None
        self._layer_error = None
        if layer is None:
            self.validate()
            return
        data, attributes, kind = layer.as_layer_data_tuple()
        try:
            spec = layer_volume_spec(data, attributes, kind)
        except (ValueError, PrecomputedError) as e:
            self._layer_error = str(e)
            self.validate()
            return
        self._layer_spec = spec
        mm, sm = spec.multiscale_metadata, spec.scale_metadata
        sharding = "none"
        values: dict[str, Any] = {
            "mode": NEW,
            "type": mm["type"],
            "data_type": mm["data_type"],
            "num_channels": mm["num_channels"],
            "key": "",
            "size": _fmt_vec(sm["size"]),
            "voxel_offset": _fmt_vec(sm["voxel_offset"]),
            "resolution": _fmt_vec(sm["resolution"]),
            "chunk_size": _fmt_vec(sm["chunk_size"]),
            "encoding": sm["encoding"],
            "sharding": sharding,
            "levels": len(spec.factors) + 1,
        }
        if "compressed_segmentation_block_size" in sm:
            values["block_size"] = _fmt_vec(sm["compressed_segmentation_block_size"])
        if spec.factors:
            values["factor"] = _fmt_vec(spec.factors[0])
        self.set_values(**values)

    # -- add-scale mode ------------------------------------------------------------------
    def load_existing(self) -> bool:
        """Read the destination's ``info`` and propose its next scale."""
        dest = str(self.field_value("destination")).strip()
        self._existing = None
        self._existing_dest = None
        self._incomplete_dest = None
        try:
            req = parse_spec(dest)
            kv = open_kvstore(req.kvstore, **(req.storage_options or {}))
            meta, _ = read_info(kv, req.path)
            if meta is None:
                raise FileNotFoundError(
                    f"no volume at {dest}: it has no info file (type the folder that holds it)"
                )
            marker = find_incomplete(dest, kvstore=kv)
        except (PrecomputedError, OSError, ValueError) as e:
            self._set_status(f"Cannot load {dest or 'the volume'}: {gui_terms(str(e), dest)}")
            self.validate()
            return False
        self._existing = meta
        self._existing_dest = dest
        if marker is not None:
            self._incomplete_dest = dest
        choices = [
            (f"{i}: {s.key}  ({' x '.join(map(str, s.size))})", i)
            for i, s in enumerate(meta.scales)
        ]
        with self._batch():
            self.fields["mode"].value = ADD
            self._choices_field("source_scale").choices = choices
            if choices:
                self.fields["source_scale"].value = choices[-1][1]
            self.fields["type"].value = (
                meta.type if meta.type in ("image", "segmentation") else "image"
            )
            self.fields["data_type"].value = meta.data_type
            self.fields["num_channels"].value = meta.num_channels
        self._set_status(
            f"Loaded {dest}: {meta.type}, {meta.data_type}, {len(meta.scales)} scale(s)"
            + (" -- an unfinished creation left data behind" if marker is not None else "")
        )
        self.propose_next_scale()
        return True

    def propose_next_scale(self) -> None:
        """Fill the scale fields with the next scale of the source for the factor."""
        if self._existing is None or not self._existing.scales:
            self.validate()
            return
        index = self.field_value("source_scale")
        if index is None:
            index = len(self._existing.scales) - 1
        try:
            factor = _parse_vec(str(self.field_value("factor")), int)
            if factor is None:
                raise ValueError("give a factor such as 2, 2, 1")
            sm = next_scale_metadata(self._existing.scales[index], factor)
        except (ValueError, PrecomputedError):
            self.validate()
            return
        values: dict[str, Any] = {
            "key": "",
            "size": _fmt_vec(sm["size"]),
            "voxel_offset": _fmt_vec(sm["voxel_offset"]),
            "resolution": _fmt_vec(sm["resolution"]),
            "chunk_size": _fmt_vec(sm["chunk_size"]),
            "encoding": sm["encoding"],
        }
        if "jpeg_quality" in sm:
            values["jpeg_quality"] = sm["jpeg_quality"]
        values["png_level"] = sm.get("png_level")
        if "compressed_segmentation_block_size" in sm:
            values["block_size"] = _fmt_vec(sm["compressed_segmentation_block_size"])
        sharding = sm.get("sharding")
        if sharding is None:
            values["sharding"] = "none"
        else:
            values.update(
                sharding="explicit",
                preshift_bits=sharding["preshift_bits"],
                minishard_bits=sharding["minishard_bits"],
                shard_bits=sharding["shard_bits"],
                hash=sharding["hash"],
                minishard_index_encoding=sharding["minishard_index_encoding"],
                data_encoding=sharding["data_encoding"],
            )
        self.set_values(**values)

    # -- reacting to changes ---------------------------------------------------------------
    class _BatchGuard:
        def __init__(self, owner: CreateVolumeWidget) -> None:
            self.owner = owner
            self.was = False

        def __enter__(self) -> None:
            self.was = self.owner._updating
            self.owner._updating = True

        def __exit__(self, *exc: Any) -> None:
            self.owner._updating = self.was

    def _batch(self) -> CreateVolumeWidget._BatchGuard:
        return CreateVolumeWidget._BatchGuard(self)

    def _on_field_changed(self, name: str, *_: Any) -> None:
        if self._updating:
            return
        self._pristine = False
        if name == "layer":
            self.fill_from_layer(self.field_value("layer"))
            return
        if name == "mode" and self.mode == ADD and self._existing is None:
            if str(self.field_value("destination")).strip():
                self.load_existing()
                return
        if name == "destination" and self._existing_dest is not None:
            if str(self.field_value("destination")).strip() != self._existing_dest:
                self._existing = None
                self._existing_dest = None
        if name in ("source_scale", "factor") and self.mode == ADD:
            self.propose_next_scale()
            return
        if (
            name == "sharding"
            and self.field_value("sharding") == "explicit"
            and self.plan is not None
        ):
            self._prefill_explicit_sharding()
            return
        self.validate()

    def _prefill_explicit_sharding(self) -> None:
        """Switching to explicit bits starts from the current (automatic) choice."""
        spec = self.plan.scale.sharding if self.plan is not None else None
        if spec is None and self.plan is not None:
            s, meta = self.plan.scale, self.plan.metadata
            voxel_bytes = np.dtype(meta.data_type).itemsize * meta.num_channels
            elements = max(1, int(float(self.field_value("shard_mib")) * 2**20 / voxel_bytes))
            try:  # the automatic choice for the target size, at least one chunk per shard
                spec = choose_sharding(
                    s.size, s.chunk_sizes[0], write_chunk_elements=elements, encoding=s.encoding
                ) or choose_sharding(s.size, s.chunk_sizes[0], shard_data_encoding="gzip")
            except PrecomputedError:
                spec = None
        if spec is not None:
            with self._batch():
                for name in ("preshift_bits", "minishard_bits", "shard_bits"):
                    self.fields[name].value = getattr(spec, name)
                self.fields["hash"].value = spec.hash
                self.fields["minishard_index_encoding"].value = spec.minishard_index_encoding
                self.fields["data_encoding"].value = spec.data_encoding
        self.validate()

    def _update_visibility(self) -> None:
        new = self.mode == NEW
        enc = self.field_value("encoding")
        shard = self.field_value("sharding")
        show = {
            "layer": new,
            "levels": new,
            "source_scale": not new,
            "fill": not new,
            "jpeg_quality": enc == "jpeg",
            "png_level": enc == "png",
            "block_size": enc == "compressed_segmentation",
            "shard_mib": shard == "automatic",
            "preshift_bits": shard == "explicit",
            "minishard_bits": shard == "explicit",
            "shard_bits": shard == "explicit",
            "hash": shard == "explicit",
            "minishard_index_encoding": shard == "explicit",
            "data_encoding": shard == "explicit",
        }
        for name, visible in show.items():
            self.rows[name].visible = visible
        self.load_button.visible = not new
        for name in ("type", "data_type", "num_channels"):
            self.fields[name].enabled = new
        self.delete_button.visible = self._incomplete_dest is not None and not self.busy
        self.cancel_button.enabled = self.busy

    def _collect(self) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, str]]:
        """The spec members the fields describe, and field parse errors."""
        errors: dict[str, str] = {}
        mm: dict[str, Any] | None = None
        if self.mode == NEW:
            mm = {
                "type": self.field_value("type"),
                "data_type": self.field_value("data_type"),
                "num_channels": int(self.field_value("num_channels")),
            }
        sm: dict[str, Any] = {}
        key = str(self.field_value("key"))
        if key:
            sm["key"] = key
        for name, kind in (
            ("size", int),
            ("voxel_offset", int),
            ("resolution", float),
            ("chunk_size", int),
        ):
            try:
                v = _parse_vec(str(self.field_value(name)), kind)
            except ValueError as e:
                errors[name] = str(e)
                continue
            if v is not None:
                sm[name] = v
        enc = self.field_value("encoding")
        sm["encoding"] = enc
        if enc == "jpeg":
            sm["jpeg_quality"] = int(self.field_value("jpeg_quality"))
        if enc == "png" and self.field_value("png_level") is not None:
            sm["png_level"] = int(self.field_value("png_level"))
        if enc == "compressed_segmentation":
            try:
                block = _parse_vec(str(self.field_value("block_size")), int)
            except ValueError as e:
                errors["block_size"] = str(e)
            else:
                if block is not None:
                    sm["compressed_segmentation_block_size"] = block
        shard = self.field_value("sharding")
        if shard == "none":
            sm["sharding"] = None
        elif shard == "explicit":
            sm["sharding"] = {
                "@type": "neuroglancer_uint64_sharded_v1",
                "preshift_bits": int(self.field_value("preshift_bits")),
                "minishard_bits": int(self.field_value("minishard_bits")),
                "shard_bits": int(self.field_value("shard_bits")),
                "hash": self.field_value("hash"),
                "minishard_index_encoding": self.field_value("minishard_index_encoding"),
                "data_encoding": self.field_value("data_encoding"),
            }
        return mm, sm, errors

    def _factor(self, errors: dict[str, str]) -> list[int] | None:
        try:
            f = _parse_vec(str(self.field_value("factor")), int)
            if f is None or any(v < 1 for v in f):
                raise ValueError("give 3 positive integers, such as 2, 2, 1")
            return f
        except ValueError as e:
            errors["factor"] = str(e)
            return None

    def validate(self) -> None:
        """Re-validate everything and refresh messages, preview and buttons."""
        if self._updating:
            return
        self._update_visibility()
        mm, sm, errors = self._collect()
        notes: dict[str, str] = {}
        new = self.mode == NEW
        plan: ScalePlan | None = None
        existing = None if new else self._existing
        if self._layer_error and new and self.field_value("layer") is not None:
            errors["layer"] = self._layer_error
        elif self._layer_spec is not None and new and self._layer_spec.notes:
            notes["layer"] = "; ".join(self._layer_spec.notes)
        if not new and existing is None:
            errors["destination"] = "load the volume's info first (Load info)"
        uses_factor = (not new and bool(self.field_value("fill"))) or (
            new and self.field_value("levels") > 1
        )
        factor = self._factor(errors) if uses_factor else None
        if self.field_value("sharding") == "automatic" and "layer" not in errors:
            try:
                sm["sharding"], note = self._automatic_sharding(mm, sm, existing)
                if note:
                    notes["shard_mib"] = note
            except PrecomputedError as e:
                errors.setdefault(field_for_error(e), _short(e))
                sm.pop("sharding", None)
        plan = self._plan_all_errors(mm, sm, existing, errors)
        if plan is not None:
            self._check_plan(plan, factor, errors)
        if plan is not None and new and factor is not None and not errors:
            try:
                extra = int(self.field_value("levels")) - 1  # the count includes scale 0
                plan_pyramid(plan.metadata, plan.scale_index, [factor] * extra)
            except (PrecomputedError, ValueError) as e:
                errors["levels"] = _short(e)
        dest = str(self.field_value("destination")).strip()
        if new and not dest:
            notes.setdefault("destination", "where to create the volume")
        elif new and "destination" not in errors:
            taken = _holds_volume(dest)
            if taken:
                errors["destination"] = (
                    f"{taken} already holds a Precomputed volume. Choose a new folder, or "
                    "switch to Add scale to add a scale to it."
                )
        if self._pristine:  # before any input: what is missing, not in red
            for name in [n for n in errors if n in _REQUIRED]:
                notes.setdefault(name, errors.pop(name))
        self.errors = errors
        self.notes = notes
        self.plan = plan if not errors else None
        self._multiscale_metadata = mm
        self._scale_metadata = sm if not errors else None
        self._show_messages()
        self._show_preview(plan if not errors else None)
        ready = (
            not errors
            and not (self._pristine and set(notes) & set(_REQUIRED) - {"destination"})
            and bool(dest)
            and not self.busy
        )
        self.create_button.enabled = ready

    def _plan_all_errors(
        self,
        mm: dict[str, Any] | None,
        sm: dict[str, Any],
        existing: md.MultiscaleMetadata | None,
        errors: dict[str, str],
    ) -> ScalePlan | None:
        """Plan with the driver; on an error, note it at its field, drop the member at
        fault and plan again, so independent problems are all shown at once (the driver
        itself stops at the first). ``None`` unless everything is valid."""
        sm = dict(sm)
        for _ in range(len(_DROP) + 2):
            try:
                plan = plan_scale(mm, sm, existing)
            except PrecomputedError as e:
                name = field_for_error(e)
                errors.setdefault(name, _short(e))
                drop = [m for m in _DROP.get(name, ()) if m in sm]
                if not drop:
                    return None
                for m in drop:
                    del sm[m]
                continue
            return None if errors else plan
        return None

    def _automatic_sharding(
        self,
        mm: dict[str, Any] | None,
        sm: dict[str, Any],
        existing: md.MultiscaleMetadata | None,
    ) -> tuple[dict[str, Any] | None, str | None]:
        """TensorStore's automatic sharding for the target shard size."""
        base = plan_scale(mm, {k: v for k, v in sm.items() if k != "sharding"}, existing)
        meta, s = base.metadata, base.scale
        voxel_bytes = np.dtype(meta.data_type).itemsize * meta.num_channels
        elements = max(1, int(float(self.field_value("shard_mib")) * 2**20 / voxel_bytes))
        try:
            spec = choose_sharding(
                s.size, s.chunk_sizes[0], write_chunk_elements=elements, encoding=s.encoding
            )
        except PrecomputedError as e:
            raise type(e)(
                f'Error parsing object member "sharding": {e}',
                member_path=("sharding", *e.member_path),
            ) from None
        if spec is None:
            return None, "the target holds at most one chunk: unsharded"
        return spec.to_json(), None

    def _check_plan(
        self, plan: ScalePlan, factor: list[int] | None, errors: dict[str, str]
    ) -> None:
        """Cross-checks the driver cannot know: data and downsampling geometry."""
        s = plan.scale
        spec = self._layer_spec
        if self.mode == NEW and spec is not None and self.field_value("layer") is not None:
            size = spec.scale_metadata["size"]
            channels = spec.multiscale_metadata["num_channels"]
            if list(s.size) != list(size):
                errors["size"] = f"must be {_fmt_vec(size)} to hold the layer's data"
            if plan.metadata.num_channels != channels:
                errors["num_channels"] = f"must be {channels} to hold the layer's data"
        if self.mode == ADD and factor is not None and self._existing is not None:
            index = self.field_value("source_scale")
            if index is not None and index < len(self._existing.scales):
                src = self._existing.scales[index]
                want = [-(-n // f) for n, f in zip(src.size, factor, strict=True)]
                if list(s.size) != want:
                    errors["size"] = (
                        f"must be {_fmt_vec(want)} to hold scale {src.key} downsampled by "
                        f"{_fmt_vec(factor)}"
                    )

    def _show_messages(self) -> None:
        for name, label in self.messages.items():
            text, style = "", ""
            if name in self.errors:
                text, style = self.errors[name], _ERROR_STYLE
            elif name in self.notes:
                text, style = self.notes[name], _NOTE_STYLE
            label.value = text
            label.native.setStyleSheet(style)
            if name != "general":
                label.visible = bool(text)
        # An error whose field is hidden is shown with the general messages.
        hidden = [
            f"{n}: {m}" for n, m in self.errors.items() if n in self.rows and not self.is_shown(n)
        ]
        if hidden and "general" not in self.errors:
            self.messages["general"].value = "\n".join(hidden)
            self.messages["general"].native.setStyleSheet(_ERROR_STYLE)

    def _show_preview(self, plan: ScalePlan | None) -> None:
        if plan is None:
            self.key_label.value = (
                "key: -- (fix the fields marked in red)" if self.errors
                else "key: -- (give the size and where to create the volume)"
            )  # fmt: skip
            self.preview.value = ""
            return
        s = plan.scale
        write = " x ".join(map(str, plan.write_chunk_shape))
        shard = "sharded" if s.sharding is not None else "unsharded"
        self.key_label.value = (
            f"key: {s.key}   (scale {plan.scale_index}; {shard}, written in blocks of {write})"
        )
        self.preview.value = _dumps(plan.info)

    def preview_info(self) -> dict[str, Any] | None:
        """The ``info`` the preview shows (``None`` while invalid)."""
        text = str(self.preview.value)
        return json.loads(text) if text else None

    def _set_status(self, text: str) -> None:
        self.status.value = text

    # -- running ---------------------------------------------------------------------------
    def create(self) -> bool:
        """Start the creation in a worker thread; ``False`` if the fields are invalid."""
        self.validate()
        if not self.can_create or self._scale_metadata is None:
            return False
        dest = str(self.field_value("destination")).strip()
        sm = dict(self._scale_metadata)
        if self.mode == NEW:
            mm = dict(self._multiscale_metadata or {})
            levels = int(self.field_value("levels")) - 1  # downsampled below scale 0
            factor = self._factor({}) if levels else None
            spec = self._layer_spec if self.field_value("layer") is not None else None
            func: Callable[..., Any] = partial(
                create_volume,
                dest,
                mm,
                sm,
                data=spec.data if spec is not None else None,
                axes=spec.axes if spec is not None else "xyzc",
                levels=[tuple(factor)] * levels if factor else 0,
                block_bytes=self.block_bytes,
            )
            what = f"Creating {dest}"
        else:
            fill = bool(self.field_value("fill"))
            factor = self._factor({}) if fill else None
            func = partial(
                add_scale,
                dest,
                sm,
                factor=factor,
                source=self.field_value("source_scale"),
                fill=fill,
                block_bytes=self.block_bytes,
            )
            what = f"Adding scale {self.plan.key if self.plan else ''} to {dest}"
        self._start(func, what, dest)
        return True

    def _start(self, func: Callable[..., Any], what: str, dest: str) -> None:
        from napari.qt.threading import create_worker
        from napari.utils import cancelable_progress

        self._cancel_event = threading.Event()
        self.last_error = None
        self.last_result = None
        pbar = cancelable_progress(total=0, desc=what)
        relay = _Relay()
        relay.progressed.connect(partial(self._on_progress, pbar))
        event = self._cancel_event

        def progress(done: int, total: int) -> None:
            relay.progressed.emit(done, total)

        def cancel() -> bool:
            return event.is_set() or bool(pbar.is_canceled)

        worker = create_worker(func, progress=progress, cancel=cancel, _ignore_errors=True)
        worker.returned.connect(partial(self._on_returned, dest))
        worker.errored.connect(partial(self._on_errored, dest))
        worker.finished.connect(self._on_finished)
        self._worker, self._relay, self._pbar = worker, relay, pbar
        self.busy = True
        self._incomplete_dest = None
        self._set_status(what + " ...")
        self.validate()
        self.create_button.enabled = False
        worker.start()

    def cancel(self) -> None:
        """Ask the running creation to stop; it removes what it wrote."""
        if self.busy:
            self._cancel_event.set()
            self._set_status("Cancelling ...")

    def _on_progress(self, pbar: Any, done: int, total: int) -> None:
        if pbar.total != total:
            pbar.total = total
        if done > pbar.n:
            pbar.update(done - pbar.n)
        self._set_status(f"Writing block {done} of {total}")

    def _on_returned(self, dest: str, result: Any) -> None:
        self.last_result = result
        key = getattr(getattr(result, "scale", None), "key", "")
        self._set_status(f"Created {dest}" + (f" (scale {key})" if key else ""))
        if self.field_value("open_layer") and self.viewer is not None:
            try:
                self.viewer.open(dest, plugin=PLUGIN)
            except Exception as e:  # the volume exists; opening is a convenience
                self._set_status(f"Created {dest}, but opening it failed: {e}")

    def _on_errored(self, dest: str, error: BaseException) -> None:
        self.last_error = error
        text = gui_terms(str(error), dest)
        if isinstance(error, Cancelled):
            self._set_status("Cancelled: the data this creation wrote has been removed")
        elif isinstance(error, IncompleteVolumeError):
            self._incomplete_dest = dest
            self._set_status(
                f"Failed, and part of what it wrote remains (Delete incomplete volume removes "
                f"it): {text}"
            )
        elif isinstance(error, AlreadyExistsError):
            self._set_status(
                f"Not created: {dest} already holds a volume, which was left untouched. "
                "Choose a new folder, or switch to Add scale to add a scale to it."
            )
        else:
            self._set_status(
                f"Failed: {text}. The data this creation wrote has been removed; nothing that "
                "was there before was changed."
            )

    def _on_finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
        self._worker = self._relay = self._pbar = None
        self.busy = False
        if self.mode == ADD and self.last_error is None and self._existing_dest is not None:
            self.load_existing()  # propose the scale after the one just added
            if self.last_result is not None:
                key = self.last_result.scale.key
                self._set_status(f"Added scale {key} to {self._existing_dest}")
        self.validate()

    def delete_incomplete(self) -> bool:
        """Remove what an unfinished creation left at the destination (its marker lists it)."""
        dest = self._incomplete_dest or str(self.field_value("destination")).strip()
        try:
            removed = discard_incomplete(dest)
        except (PrecomputedError, OSError) as e:
            self._set_status(f"Deleting the incomplete data failed: {e}")
            return False
        self._incomplete_dest = None
        self._set_status("Removed the incomplete data" if removed else "Nothing to remove")
        if self.mode == ADD and self._existing_dest is not None:
            self.load_existing()
        self.validate()
        return removed
