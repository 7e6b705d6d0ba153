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
        except ValueError as e:
            raise FormatVersionError(f"{where}: not a tensorvcs config ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatVersionError(f"{where}: not a tensorvcs config (no format: tensorvcs)")
        version = doc.get("format_version")
        if not isinstance(version, int) or not MIN_FORMAT_VERSION <= version <= FORMAT_VERSION:
            raise FormatVersionError(
                f"{where}: format version {version!r} is not supported by this tensorvcs "
                f"(reads {MIN_FORMAT_VERSION}..{FORMAT_VERSION}); upgrade tensorvcs"
            )
        required = doc.get("required_features", [])
        unknown = sorted(set(required) - KNOWN_FEATURES)
        if unknown:
            raise FormatVersionError(
                f"{where}: repository requires features this tensorvcs lacks: {', '.join(unknown)}"
            )
        chunk_size = doc.get("chunk_size", DEFAULT_CHUNK_SIZE)
        pack_threshold = doc.get("pack_threshold", DEFAULT_PACK_THRESHOLD)
        if not isinstance(chunk_size, int) or chunk_size < 4096 or chunk_size % 64:
            raise FormatVersionError(f"{where}: chunk_size must be a multiple of 64, >= 4096")
        if not isinstance(pack_threshold, int) or not 0 <= pack_threshold <= chunk_size:
            raise FormatVersionError(f"{where}: pack_threshold must be in 0..chunk_size")
        return cls(
            format_version=version,
            chunk_size=chunk_size,
            pack_threshold=pack_threshold,
            required_features=list(required),
            optional_features=list(doc.get("optional_features", [])),
            settings=dict(doc.get("settings", {})),
        )
