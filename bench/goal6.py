"""The verdict of issue 11's goal 6, shared by bench/object_cost.py (local disk) and
bench/object_cost_s3.py (object storage): fewer, larger objects are asked for only if
per-object costs matter, i.e. if writing the same bytes as one object per 4 MiB chunk is
measurably slower than as 64 MiB packs. "Measurably" is more than PACK_PAYS times the packs'
median, above this machine's run-to-run spread of these figures (about 5-10%)."""

from __future__ import annotations

PACK_PAYS = 1.10


def verdict(rows: list[tuple[str, float, float]]) -> str:
    """One line from (where, seconds for 4 MiB objects, seconds for 64 MiB objects) rows."""
    parts, matters = [], []
    for where, small_s, pack_s in rows:
        r = small_s / pack_s
        parts.append(f"{r:.2f}x at {where}")
        if r > PACK_PAYS:
            matters.append(where)
    head = (
        "goal 6 (fewer, larger objects if per-object costs matter): 4 MiB objects, "
        "written as tensorvcs writes them, took "
    )
    if matters:
        tail = (
            f"per-object cost MATTERS at {', '.join(matters)} (over {PACK_PAYS:g}x): "
            "packing would pay there"
        )
    else:
        tail = (
            f"per-object cost does not matter (at most {PACK_PAYS:g}x asked): one object "
            "per chunk is kept"
        )
    return head + ", ".join(parts) + " the time of 64 MiB ones; " + tail
