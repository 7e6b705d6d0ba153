"""The repository config (``.tvcs/config.json``) and the format-version gate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import FormatVersionError
from . import jsonenc

FORMAT_NAME = "tensorvcs"
FORMAT_VERSION = 1
MIN_FORMAT_VERSION = 1
KNOWN_FEATURES: frozenset[str] = frozenset()

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_PACK_THRESHOLD = 64 << 10
MIN_CHUNK_SIZE = 4096
# The largest chunk_size a repository may have: it also bounds every chunk and pack object a
# reader accepts (their length is checked before anything is allocated; docs/format.md).
MAX_CHUNK_SIZE = 1 << 30
# The longest delta chain a reader decodes (store/objects.py); delta_max_depth may not exceed it.
MAX_DELTA_CHAIN = 4096
# settings.verify_reads: what reads verify an object's content against (store/objects.py)
VERIFY_READS = ("checksum", "hash")


@dataclass
class RepoConfig:
    format_version: int = FORMAT_VERSION
    chunk_size: int = DEFAULT_CHUNK_SIZE
    pack_threshold: int = DEFAULT_PACK_THRESHOLD
    required_features: list[str] = field(default_factory=list)
    optional_features: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT_NAME, **asdict(self)}
        return jsonenc.dumps(doc) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RepoConfig:
        try:
            doc = jsonenc.loads(data)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise FormatVersionError(f"{where}: not a tensorvcs config ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatVersionError(f"{where}: not a tensorvcs config (no format: tensorvcs)")
        version = doc.get("format_version")
        if not isinstance(version, int) or not MIN_FORMAT_VERSION <= version <= FORMAT_VERSION:
            raise FormatVersionError(
                f"{where}: format version {version!r} is not supported by this tensorvcs "
                f"(reads {MIN_FORMAT_VERSION}..{FORMAT_VERSION}); upgrade tensorvcs"
            )
        required = doc.get("required_features", [])
        optional = doc.get("optional_features", [])
        for name, features in (("required_features", required), ("optional_features", optional)):
            if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
                raise FormatVersionError(f"{where}: {name} must be a list of strings")
        unknown = sorted(set(required) - KNOWN_FEATURES)
        if unknown:
            raise FormatVersionError(
                f"{where}: repository requires features this tensorvcs lacks: {', '.join(unknown)}"
            )
        chunk_size = doc.get("chunk_size", DEFAULT_CHUNK_SIZE)
        pack_threshold = doc.get("pack_threshold", DEFAULT_PACK_THRESHOLD)
        if (
            type(chunk_size) is not int
            or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
            or chunk_size % 64
        ):
            raise FormatVersionError(
                f"{where}: chunk_size must be a multiple of 64 in "
                f"{MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
            )
        if type(pack_threshold) is not int or not 0 <= pack_threshold <= chunk_size:
            raise FormatVersionError(f"{where}: pack_threshold must be in 0..chunk_size")
        settings = doc.get("settings", {})
        problem = _settings_problem(settings)
        if problem:
            raise FormatVersionError(f"{where}: {problem}")
        return cls(
            format_version=version,
            chunk_size=chunk_size,
            pack_threshold=pack_threshold,
            required_features=list(required),
            optional_features=list(optional),
            settings=dict(settings),
        )


def _settings_problem(settings: Any) -> str | None:
    """Why the tool settings this build reads cannot be used (None when they can)."""
    if not isinstance(settings, dict):
        return "settings must be a JSON object"
    depth = settings.get("delta_max_depth")
    if depth is not None and (type(depth) is not int or not 0 <= depth <= MAX_DELTA_CHAIN):
        return f"settings.delta_max_depth must be an integer in 0..{MAX_DELTA_CHAIN}"
    verify = settings.get("verify_reads")
    if verify is not None and verify not in VERIFY_READS:
        return f"settings.verify_reads must be one of {', '.join(map(repr, VERIFY_READS))}"
    cache = settings.get("delta_cache_bytes")
    if cache is not None and (type(cache) is not int or cache < 0):
        return "settings.delta_cache_bytes must be a non-negative integer"
    return None
