"""The JSON Schema (draft 2020-12) of every command's ``--json`` output, by command path
("log", "remote list"). docs/cli.md "JSON output" describes them in words; the test
tests/cli/test_json_schemas.py runs each command and validates its output against its schema,
and fails for a command with ``--json`` that has no schema here.

Every document is an object that starts with ``"schema": 1``; the same thing has the same name
everywhere (``id`` a commit id, ``step``, ``metrics``, ``message``, ``refs``, ``logical_bytes``,
``stored_bytes``); numbers are numbers, NaN and infinities null."""

from __future__ import annotations

from typing import Any

VERSION = 1

ID: dict[str, Any] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
OPT_ID: dict[str, Any] = {"anyOf": [ID, {"type": "null"}]}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
NUM: dict[str, Any] = {"type": ["number", "null"]}
STR: dict[str, Any] = {"type": "string"}
OPT_STR: dict[str, Any] = {"type": ["string", "null"]}
STEP: dict[str, Any] = {"type": ["integer", "null"]}
METRICS: dict[str, Any] = {"type": "object", "additionalProperties": NUM}
STRINGS: dict[str, Any] = {"type": "array", "items": STR}
IDS: dict[str, Any] = {"type": "array", "items": ID}
REF: dict[str, Any] = {
    "type": "object",
    "required": ["name", "kind", "head"],
    "properties": {
        "name": STR,
        "kind": {"enum": ["branch", "tag", "head"]},
        "head": {"type": "boolean"},
    },
}
FILE: dict[str, Any] = {
    "type": "object",
    "required": ["path", "kind", "format", "size"],
    "properties": {"path": STR, "kind": STR, "format": OPT_STR, "size": COUNT},
}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object with these fields (all of ``required`` present); others are allowed, so a
    field added later is not a new schema version."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def doc(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """A top-level document: ``"schema": 1`` and these fields."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **obj({"schema": {"const": VERSION}, **required}, optional),
    }


COMMIT: dict[str, Any] = obj(
    {
        "id": ID,
        "parents": IDS,
        "manifest": ID,
        "author": STR,
        "timestamp": STR,
        "message": STR,
        "step": STEP,
        "metrics": METRICS,
        "metadata": {"type": "object"},
        "refs": arr(REF),
        "nonfinite": arr(obj({"key": STR, "nan": COUNT, "inf": COUNT})),
    }
)
STATS: dict[str, Any] = {
    "anyOf": [
        obj(
            {"numel": COUNT, "nan": COUNT, "inf": COUNT},
            {"min": NUM, "max": NUM, "mean": NUM, "norm": NUM},
        ),
        {"type": "null"},
    ]
}
CONFIG: dict[str, Any] = {
    "format_version": COUNT,
    "chunk_size": COUNT,
    "pack_threshold": COUNT,
    "required_features": STRINGS,
    "optional_features": STRINGS,
}
TRANSFER: dict[str, Any] = {
    "verb": {"enum": ["push", "fetch", "pull", "clone"]},
    "remote": STR,
    "url": STR,
    "objects_sent": COUNT,
    "bytes_sent": COUNT,
    "objects_skipped": COUNT,
    "commits": COUNT,
    "updated": arr(obj({"name": STR, "old": OPT_ID, "new": OPT_ID})),
    "up_to_date": STRINGS,
    "tags_kept": STRINGS,
}
DELETED: dict[str, Any] = obj({"deleted": STR, "id": ID})
WRITTEN: dict[str, Any] = {
    "id": ID,
    "branch": OPT_STR,
    "tag": OPT_STR,
    "logical_bytes": COUNT,
    "new_stored_bytes": COUNT,
}
LEAF: dict[str, Any] = obj({"key": STR, "kind": STR, "what": STR})

SCHEMAS: dict[str, dict[str, Any]] = {
    "init": doc(
        {"path": STR, "branch": STR, "existed": {"type": "boolean"}, **CONFIG},
        {"settings": {"type": "object"}},
    ),
    "config": doc({"config": {"type": "object"}}),
    "commit": doc(
        {
            **WRITTEN,
            "parents": IDS,
            "step": STEP,
            "metrics": METRICS,
            "files": arr(FILE),
            "notes": STRINGS,
        }
    ),
    "import": doc({**WRITTEN, "items": COUNT}),
    "export": doc({"id": ID, "format": STR, "path": STR}),
    "checkout": doc(
        {
            "id": ID,
            "files": arr(
                obj(
                    {
                        "path": STR,
                        "dest": STR,
                        "format": OPT_STR,
                        "status": STR,
                        "size": {"type": ["integer", "null"]},
                    },
                    {"blake3": OPT_STR, "byte_identical": {"type": ["boolean", "null"]}},
                )
            ),
        }
    ),
    "status": doc(
        {
            "head": OPT_ID,
            "branch": OPT_STR,
            "upstream": OPT_STR,
            "ahead": {"type": ["integer", "null"]},
            "behind": {"type": ["integer", "null"]},
            "files": arr(obj({"path": STR, "status": STR})),
        }
    ),
    "log": doc({"commits": arr(COMMIT)}),
    "show": doc(
        {
            **COMMIT["properties"],
            "tensors": COUNT,
            "logical_bytes": COUNT,
            "files": arr(obj(FILE["properties"], {"metadata": {}})),
        }
    ),
    "ls": doc(
        {
            "id": ID,
            "tensors": arr(
                obj(
                    {
                        "key": STR,
                        "kind": STR,
                        "logical_bytes": COUNT,
                        "stored_bytes": COUNT,
                        "stats": STATS,
                    },
                    {"dtype": OPT_STR, "shape": {"type": ["array", "null"], "items": COUNT}},
                )
            ),
        }
    ),
    "diff": doc(
        {
            "a": ID,
            "b": ID,
            "added": arr(LEAF),
            "removed": arr(LEAF),
            "changed": arr(
                obj(
                    {"key": STR, "kind": STR, "a": STR, "b": STR},
                    {  # with --stats, for a changed tensor
                        "group": {"enum": ["weights", "optimizer moments", "other"]},
                        "rel_l2": NUM,
                        "delta_norm": NUM,
                        "norm_a": NUM,
                        "norm_b": NUM,
                        "max_abs_diff": NUM,
                        "frac_changed": NUM,
                        "nonfinite": {"type": "boolean"},
                        "source": {"enum": ["recorded", "computed"]},
                    },
                )
            ),
            "dtype_or_shape_changed": arr(obj({"key": STR, "a": STR, "b": STR})),
            "unchanged": COUNT,
        },
        {  # with --stats
            "sort": {"enum": ["rel", "abs", "key"]},
            "summary": obj(
                {
                    "compared": COUNT,
                    "changed": COUNT,
                    "unchanged": COUNT,
                    "dtype_or_shape_changed": COUNT,
                    "added": COUNT,
                    "removed": COUNT,
                    "nonfinite": COUNT,
                    "largest_rel_l2": NUM,
                    "largest_key": OPT_STR,
                    "recorded": COUNT,
                    "computed": COUNT,
                    "bytes_read": COUNT,
                }
            ),
        },
    ),
    "branch": {
        "oneOf": [
            doc(
                {
                    "current": OPT_STR,
                    "branches": arr(obj({"name": STR, "id": ID, "head": {"type": "boolean"}})),
                }
            ),
            doc({"branch": STR, "id": ID}),
            doc(DELETED["properties"]),
        ]
    },
    "tag": {
        "oneOf": [
            doc({"tags": arr(obj({"name": STR, "id": ID}))}),
            doc({"tag": STR, "id": ID}),
            doc(DELETED["properties"]),
        ]
    },
    "du": doc(
        {
            "commits": arr(
                obj(
                    {
                        "id": ID,
                        "step": STEP,
                        "message": STR,
                        "logical_bytes": COUNT,
                        "new_content_bytes": COUNT,
                        "stored_bytes": COUNT,
                        "dedup_ratio": NUM,
                        "compression_ratio": NUM,
                    }
                )
            ),
            "total": obj(
                {
                    "commits": COUNT,
                    "logical_bytes": COUNT,
                    "unique_content_bytes": COUNT,
                    "stored_bytes": COUNT,
                    "dedup_ratio": NUM,
                    "compression_ratio": NUM,
                    "overall_ratio": NUM,
                    "store_objects": COUNT,
                    "store_bytes": COUNT,
                }
            ),
        }
    ),
    "fsck": doc(
        {
            "ok": {"type": "boolean"},
            "objects_checked": COUNT,
            "commits": COUNT,
            "dangling": COUNT,
            "dangling_commits": IDS,
            "problems": arr({}),
        }
    ),
    "gc": doc(
        {
            "reachable_objects": COUNT,
            "deleted_objects": COUNT,
            "freed_bytes": COUNT,
            "kept_bytes": COUNT,
            "rewritten_objects": COUNT,
            "expired_reflog_entries": COUNT,
            "young_objects_kept": COUNT,
            "deleted_commits": IDS,
        }
    ),
    "compact": doc(
        {
            "commits": COUNT,
            "candidates": COUNT,
            "rewritten": COUNT,
            "bytes_before": COUNT,
            "bytes_saved": COUNT,
        }
    ),
    "reflog": doc(
        {
            "ref": STR,
            "entries": arr(
                obj(
                    {
                        "selector": STR,
                        "id": OPT_ID,
                        "old": OPT_ID,
                        "time": STR,
                        "who": STR,
                        "message": STR,
                        "exists": {"type": "boolean"},
                    }
                )
            ),
        }
    ),
    "report": doc(
        {
            "output": STR,
            "range": STR,
            "commits": COUNT,
            "metrics": STRINGS,
            "layers": COUNT,
            "stats_recorded_commits": COUNT,
            "measured_commits": COUNT,
            "measured_bytes": COUNT,
            "nonfinite_commits": IDS,
            "store_bytes": COUNT,
            "torch_save_bytes": {"type": ["integer", "null"]},
            "seconds": {"type": "number"},
        }
    ),
    "remote list": doc({"remotes": arr(obj({"name": STR, "url": STR}))}),
    "push": doc(TRANSFER),
    "fetch": doc(TRANSFER),
    "pull": doc(TRANSFER),
    "clone": doc({**TRANSFER, "path": STR}),
}
SCHEMAS["restore"] = SCHEMAS["checkout"]  # restore prints checkout's document
