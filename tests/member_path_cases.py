"""Specs whose errors name a member: (multiscale_metadata, scale_metadata, existing info)
-> the error's member_path. Shared by the driver's and the create widget's tests."""

from __future__ import annotations

from typing import Any

from volumes import sharding_json

MM8 = {"type": "image", "data_type": "uint8", "num_channels": 1}
SM = {"size": [40, 30, 10], "resolution": [4, 4, 40]}
EXISTING = {
    "@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8",
    "num_channels": 1, "scales": [{"key": "s0", "size": [40, 30, 10], "resolution": [4, 4, 40],
                                    "chunk_sizes": [[8, 8, 8]], "encoding": "raw"}],
}  # fmt: skip

CASES: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None, Any, tuple[Any, ...]]] = {
    "png_level": (MM8, {**SM, "encoding": "png", "png_level": 12}, None, ("scale_metadata", "png_level")),
    "size_element": (MM8, {**SM, "size": [1, "x", 3]}, None, ("scale_metadata", "size", 1)),
    "sharding_member": (MM8, {**SM, "sharding": {**sharding_json(0, 0, 0), "preshift_bits": 99}}, None, ("scale_metadata", "sharding", "preshift_bits")),
    "invalid_region": (MM8, {**SM, "voxel_offset": [2**62, 0, 0]}, None, ("scale_metadata", "size")),
    "no_domain": (MM8, {"resolution": [4, 4, 40]}, None, ("scale_metadata", "size")),
    "no_dtype": ({"num_channels": 1}, SM, None, ("multiscale_metadata", "data_type")),
    "unsupported_dtype": ({"data_type": "int64", "num_channels": 1}, SM, None, ("multiscale_metadata", "data_type")),
    "encoding_dtype": ({**MM8, "data_type": "uint16"}, {**SM, "encoding": "jpeg"}, None, ("scale_metadata", "encoding")),
    "encoding_channels": ({**MM8, "num_channels": 2}, {**SM, "encoding": "jpeg"}, None, ("scale_metadata", "encoding")),
    "sharded_64_bits": (MM8, {"size": [2**30, 2**30, 2**10], "chunk_size": [1, 1, 1], "sharding": sharding_json(0, 0, 0)}, None, ("scale_metadata", "sharding")),
    "existing_key": (None, {**SM, "key": "s0", "resolution": [8, 8, 40]}, EXISTING, ("scale_metadata", "key")),
    "existing_resolution": (None, SM, EXISTING, ("scale_metadata", "resolution")),
    "existing_data_type": ({"data_type": "uint16"}, {**SM, "resolution": [8, 8, 40]}, EXISTING, ("multiscale_metadata", "data_type")),
}  # fmt: skip
