"""The store interface's own logic: coalescing of nearby ranges."""

from __future__ import annotations


def test_coalesce_ranges_merges_only_nearby_ranges_of_one_key() -> None:
    from precomputed.kvstore.base import coalesce_ranges

    reqs = [
        ("a", 100, 200),  # 0
        ("a", 0, 100),  # 1: touches 0
        ("b", 0, 10),  # 2: other key
        ("a", 150, 160),  # 3: inside 0
        ("a", 210, 230),  # 4: gap 10 <= its size 20
        ("a", 240, 245),  # 5: gap 10 > its size 5: not merged
        ("a", -10, None),  # 6: suffix read: passed through
        ("a", 300, None),  # 7: open-ended: passed through
    ]
    merged, parts = coalesce_ranges(reqs, gap=64, limit=1 << 20)
    got = {m: sorted(members) for m, (_, members) in zip(merged, parts, strict=True)}
    assert got == {
        ("a", 0, 230): [0, 1, 3, 4],
        ("a", 240, 245): [5],
        ("b", 0, 10): [2],
        ("a", -10, None): [6],
        ("a", 300, None): [7],
    }
    merged, _ = coalesce_ranges(reqs, gap=-1, limit=1 << 20)
    assert ("a", 0, 100) in merged and ("a", 100, 200) in merged  # -1: never merge
    merged, _ = coalesce_ranges(reqs, gap=64, limit=150)
    assert ("a", 0, 100) in merged and ("a", 100, 230) in merged  # split at the limit
