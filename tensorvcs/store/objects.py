"""The object store: enveloped, content-addressed objects on top of a Store.

An object with id ``abcd…`` lives at ``objects/ab/cd…``. Writes never replace an existing
object (same id, same content). Reads verify the content unless told not to: against the
content checksum the writer recorded in the envelope (XXH3-128) when there is one and
``checksums`` is on, else against the id (BLAKE3). fsck (``check``, ``check_many``) always
verifies the id, and the checksum too where there is one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

import numpy as np

from ..errors import (
    CorruptObjectError,
    ObjectNotFoundError,
    TensorVCSError,
    UnsupportedValueError,
)
from ..format import codecs, envelope
from ..format.config import MAX_DELTA_CHAIN
from ..format.ids import (
    CHECK_KEY,
    Buffer,
    check_object_id,
    content_check,
    is_content_check,
    is_object_id,
    object_id,
)
from .base import Store, View

OBJECTS = "objects"
HEAD_BYTES = 4096  # enough for nearly every envelope header and its codec parameters
MAPPED_LINKS = 4  # files of one delta chain decoded from memory maps at most (see _links)

# one link of a delta chain: (object id, its header, its stored file or None)
_Link = tuple[str, envelope.Header, Any]
_V = TypeVar("_V", bytes, View)


def object_name(oid: str) -> str:
    return f"{OBJECTS}/{oid[:2]}/{oid[2:]}"


class ObjectStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.bytes_read = 0  # stored (encoded) bytes read since creation; for tests and stats
        self.objects_read = 0
        # verify reads against the envelope's content checksum where it has one (the
        # repository setting verify_reads, "checksum" by default); False: always the id
        self.checksums = True

    def has(self, oid: str) -> bool:
        return self.store.exists(object_name(oid))

    def write(
        self, oid: str, kind: int, length: int, enc: codecs.Encoded, *, defer: bool = False
    ) -> int:
        """Store an already-encoded object; returns the bytes written (0 when it was present).
        An object larger than readers accept for its kind (envelope.MAX_CONTENT) is refused.
        Callers ask ``has`` before encoding; the store's create-only ``put_if_absent`` is the
        check that counts, so there is no second existence check here (on object storage it
        was a HEAD request per new object). ``defer``: see Store.put_if_absent (the caller
        syncs the store before it writes anything that names the object)."""
        if length > envelope.MAX_CONTENT.get(kind, 0):
            raise UnsupportedValueError(
                f"cannot store a {envelope.KIND_NAMES.get(kind, kind)} of {length} bytes: "
                f"readers accept at most {envelope.MAX_CONTENT.get(kind, 0)}"
            )
        pieces = envelope.pack(kind, length, enc)
        if not self.store.put_if_absent(object_name(oid), pieces, defer=defer):
            return 0
        return sum(len(p) for p in pieces)

    def replace(
        self,
        oid: str,
        kind: int,
        length: int,
        enc: codecs.Encoded,
        *,
        sync: bool = True,
        defer: bool = False,
    ) -> int:
        """Atomically swap the stored encoding of an existing object (same content, same id);
        returns the bytes of the new file. ``sync=False`` leaves the folder fsync to the
        caller's next ``store.sync()``; ``defer=True`` the swap itself (Store.put): it then
        happens after that sync has made the objects written before it durable, so a
        re-encoding may depend on them (a delta on its new base)."""
        pieces = envelope.pack(kind, length, enc)
        self.store.put(object_name(oid), pieces, sync=sync, defer=defer)
        return sum(len(p) for p in pieces)

    def put_bytes(self, kind: int, content: Buffer) -> str:
        """Hash, encode (zstd when it pays) and store untyped content; returns its id."""
        oid = object_id(content)
        if not self.has(oid):
            self.write(oid, kind, len(content), codecs.encode_bytes(content).checked(content))
        return oid

    def raw(self, oid: str) -> bytes:
        """The stored file of ``oid`` (envelope and payload), not decoded."""
        return self._stored(oid, self.store.get)

    def _view(self, oid: str) -> View:
        """The stored file of ``oid`` to decode once (a memory map on a local store)."""
        return self._stored(oid, self.store.get_view)

    def _stored(self, oid: str, get: Callable[[str], _V]) -> _V:
        try:
            data = get(object_name(check_object_id(oid)))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {oid} is missing from the store", oid) from None
        with self._lock:
            self.bytes_read += len(data)
            self.objects_read += 1
        return data

    def header(self, oid: str) -> envelope.Header:
        """The envelope of ``oid`` (reads only the file's beginning)."""
        try:
            data = self.store.get_head(object_name(oid), HEAD_BYTES)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {oid} is missing from the store", oid) from None
        if len(data) >= envelope.HEADER_SIZE:
            span = envelope.header_span(data)
            if len(data) < span <= envelope.HEADER_SIZE + envelope.MAX_PARAMS:
                data = self.store.get_head(object_name(oid), span)
        return envelope.read_header(data, oid)

    def read(
        self, oid: str, *, verify: bool = True, full: bool = False
    ) -> tuple[envelope.Header, np.ndarray]:
        """Decode ``oid``; its content must match its checksum, or hash to ``oid``
        (CorruptObjectError otherwise). ``full``: both, whatever ``checksums`` says (fsck)."""
        data = self._view(oid)
        h = envelope.read_header(data, oid)
        links = self._links(oid, h, data)
        out = envelope.allocate(h, oid)
        self._decode(links, out, verify, full)
        return h, out

    def read_bytes(self, oid: str) -> bytes:
        return self.read(oid)[1].tobytes()

    def read_into(self, oid: str, out: np.ndarray, *, verify: bool = True) -> envelope.Header:
        """Decode ``oid`` straight into the uint8 array ``out`` and verify it there."""
        data = self._view(oid)
        h = envelope.read_header(data, oid)
        if h.length != out.nbytes:
            raise CorruptObjectError(
                f"object {oid} holds {h.length} bytes where {out.nbytes} were expected", oid
            )
        self._decode(self._links(oid, h, data), out, verify)
        return h

    def _links(self, oid: str, h: envelope.Header, data: View) -> list[_Link]:
        """The delta chain of ``oid`` with every object's stored file, each checked to fit its
        header before anything is allocated. The first MAPPED_LINKS files may be memory maps;
        deeper bases are read (a map holds a file descriptor while the chain is decoded, and
        chains may be thousands deep: MAX_DELTA_CHAIN)."""
        fetched = 1

        def fetch(base: str) -> tuple[envelope.Header, Any]:
            nonlocal fetched
            fetched += 1
            return self._fetch(base, mapped=fetched <= MAPPED_LINKS)

        links = self._walk(oid, (h, data), fetch)
        for o, lh, ldata in links:
            envelope.check_fits(lh, memoryview(ldata)[lh.payload_offset :], o)
        return links

    def _fetch(self, oid: str, *, mapped: bool = True) -> tuple[envelope.Header, Any]:
        data = self._view(oid) if mapped else self.raw(oid)
        return envelope.read_header(data, oid), data

    def _fetch_header(self, oid: str) -> tuple[envelope.Header, Any]:
        return self.header(oid), None

    def _walk(
        self,
        oid: str,
        first: tuple[envelope.Header, Any] | None,
        fetch: Callable[[str], tuple[envelope.Header, Any]],
        stop: Callable[[str], bool] | None = None,
    ) -> list[_Link]:
        """Follow ``oid``'s delta bases down to a self-contained object, iteratively: a chain
        that loops, or is longer than MAX_DELTA_CHAIN deltas, or whose bases do not have the
        same length, is CorruptObjectError naming ``oid``; a missing base is
        ObjectNotFoundError naming the base. ``stop(base)`` true ends the walk before ``base``."""
        h, data = first if first is not None else fetch(oid)
        links: list[_Link] = [(oid, h, data)]
        seen = {oid}
        while h.codec == codecs.CODEC_DELTA:
            cur = links[-1][0]
            base = _base_id(cur, h)
            if base in seen:
                loop = " -> ".join(o[:12] for o, _, _ in links) + f" -> {base[:12]}"
                raise CorruptObjectError(
                    f"object {oid} is corrupt: its delta chain loops ({loop}: object {cur} "
                    f"names {base} as its base)",
                    oid,
                )
            if len(links) > MAX_DELTA_CHAIN:
                raise CorruptObjectError(
                    f"object {oid} is corrupt: its delta chain is longer than "
                    f"{MAX_DELTA_CHAIN} deltas",
                    oid,
                )
            if stop is not None and stop(base):
                break
            try:
                bh, bdata = fetch(base)
            except ObjectNotFoundError:
                raise ObjectNotFoundError(
                    f"object {base}, the delta base of {cur}, is missing from the store", base
                ) from None
            if bh.length != h.length:
                raise CorruptObjectError(
                    f"object {cur} is corrupt: it does not fit its delta base {base} "
                    f"({h.length} bytes against {bh.length})",
                    cur,
                )
            seen.add(base)
            links.append((base, bh, bdata))
            h = bh
        return links

    def chain(self, oid: str, *, stop: Callable[[str], bool] | None = None) -> list[str]:
        """``oid`` and its delta bases, down to the self-contained object its content is
        rebuilt from (``[oid]`` for a self-contained object). Reads headers only. Loops and
        chains longer than MAX_DELTA_CHAIN are CorruptObjectError, a missing base is
        ObjectNotFoundError. With ``stop``, the walk ends before the first base for which
        ``stop(base)`` is true (a transfer stops at bases the destination has)."""
        return [o for o, _, _ in self._walk(oid, None, self._fetch_header, stop)]

    def _decode(
        self, links: list[_Link], out: np.ndarray, verify: bool, full: bool = False
    ) -> None:
        """Decode a chain bottom-up into ``out``: the self-contained object, then each delta
        on top of it. Iterative, so a chain of any allowed depth needs no recursion. The
        intermediate contents are not verified: the check of the final content (its
        checksum, or its hash) covers the whole chain; only on a mismatch is the chain
        decoded again to name the wrong object."""
        bottom, bh, bdata = links[-1]
        codecs.decode_into(bh.codec, bh.params, memoryview(bdata)[bh.payload_offset :], out, bottom)
        for o, lh, ldata in reversed(links[:-1]):
            codecs.decode_delta_into(lh.params, memoryview(ldata)[lh.payload_offset :], out, o)
        oid, top = links[0][0], links[0][1]
        if verify and not self._matches(oid, top, out, full):
            if len(links) > 1:
                self._name_corrupt_link(links, out.nbytes)
            raise CorruptObjectError(
                f"object {oid} is corrupt: its content hashes differently", oid
            )

    def _matches(self, oid: str, h: envelope.Header, content: np.ndarray, full: bool) -> bool:
        """Whether ``content`` is that of ``oid``: it matches the checksum the envelope ``h``
        records (when there is one and ``checksums`` is on), or hashes to the id. ``full``:
        it hashes to the id, and matches the checksum where there is one (a malformed
        checksum is corruption then; otherwise it is not used)."""
        check = h.params.get(CHECK_KEY)
        if full:
            if check is not None and not is_content_check(check):
                raise CorruptObjectError(
                    f"object {oid} is corrupt: its {CHECK_KEY} checksum is malformed", oid
                )
            if object_id(content.data) != oid:
                return False
            if check is not None and content_check(content.data) != check:
                raise CorruptObjectError(
                    f"object {oid} is corrupt: its content hashes to its id but not to the "
                    f"{CHECK_KEY} checksum its envelope records",
                    oid,
                )
            return True
        if self.checksums and is_content_check(check):
            return content_check(content.data) == check
        return object_id(content.data) == oid

    def _name_corrupt_link(self, links: list[_Link], n: int) -> None:
        """Decode the chain again verifying every base; raise naming the first one whose
        content does not hash to its id (return when they all do)."""
        buf = np.empty(n, dtype=np.uint8)
        for k in range(len(links) - 1, 0, -1):
            o, lh, ldata = links[k]
            payload = memoryview(ldata)[lh.payload_offset :]
            if k == len(links) - 1:
                codecs.decode_into(lh.codec, lh.params, payload, buf, o)
            else:
                codecs.decode_delta_into(lh.params, payload, buf, o)
            if object_id(buf.data) != o:
                raise CorruptObjectError(
                    f"object {o} is corrupt: its content hashes differently (it is the delta "
                    f"base of {links[k - 1][0]}, in the chain of {links[0][0]})",
                    o,
                )

    def delta_base(self, oid: str) -> str | None:
        """The base a delta object needs, or None for a self-contained object (one step:
        walk whole chains with ``chain``, which detects loops)."""
        h = self.header(oid)
        return _base_id(oid, h) if h.codec == codecs.CODEC_DELTA else None

    def depth(self, oid: str) -> int:
        """Deltas to decode before reaching a self-contained object (0 for one), as the
        header records it (informational; checked to be in 1..MAX_DELTA_CHAIN)."""
        h = self.header(oid)
        if h.codec != codecs.CODEC_DELTA:
            return 0
        try:
            return codecs.delta_params(h.params, h.length).depth
        except ValueError as e:
            raise CorruptObjectError(f"object {oid} has bad delta parameters: {e}", oid) from e

    def kind(self, oid: str) -> int:
        return self.header(oid).kind

    def mtime(self, oid: str) -> float | None:
        """When the object's file was written (None if the store cannot tell)."""
        return self.store.mtime(object_name(oid))

    def stored_size(self, oid: str) -> int:
        return self.store.size(object_name(oid))

    def ids(self) -> Iterator[str]:
        """The ids of the stored objects (files whose names are not ids are not objects)."""
        for name in self.store.list(OBJECTS):
            parts = name.split("/")
            if len(parts) == 3 and len(parts[1]) == 2:
                oid = parts[1] + parts[2]
                if is_object_id(oid):
                    yield oid

    def ids_with_prefix(self, prefix: str) -> list[str]:
        if len(prefix) < 2:
            return [i for i in self.ids() if i.startswith(prefix)]
        folder = f"{OBJECTS}/{prefix[:2]}"
        names = (prefix[:2] + n.rsplit("/", 1)[1] for n in self.store.list(folder))
        return [oid for oid in names if oid.startswith(prefix) and is_object_id(oid)]

    def delete(self, oid: str) -> None:
        self.store.delete(object_name(oid))

    def check_many(
        self, oids: Iterable[str], pool: Executor
    ) -> dict[str, envelope.Header | TensorVCSError]:
        """``check`` of every object of ``oids``, decoding each once: the objects form delta
        trees (a delta's base is its parent), and each tree is decoded from its self-contained
        root down, every delta applied to its base's content already decoded (a copy where a
        base has several deltas). So fsck's cost is one decode per object, not one per link
        of each chain. Objects no root reaches (a loop, a missing base, a broken header) are
        checked one by one, which names their fault. {oid: header, or the error}."""
        ids = list(oids)
        heads: dict[str, envelope.Header] = {}
        out: dict[str, envelope.Header | TensorVCSError] = {}
        for oid, got in zip(ids, pool.map(self._header_or_error, ids), strict=True):
            if isinstance(got, TensorVCSError):
                out[oid] = got
            else:
                heads[oid] = got
        children: dict[str, list[str]] = {}
        roots = []
        for oid, h in heads.items():
            if h.codec != codecs.CODEC_DELTA:
                roots.append(oid)
                continue
            base = h.params.get("base")
            if isinstance(base, str) and base in heads and base != oid:
                children.setdefault(base, []).append(oid)
        for tree in pool.map(lambda r: self._check_tree(r, children), roots):
            out.update(tree)
        for oid in ids:  # not reached from a root: check alone, which names what is wrong
            if oid not in out:
                try:
                    out[oid] = self.check(oid)
                except TensorVCSError as e:
                    out[oid] = e
        return out

    def _header_or_error(self, oid: str) -> envelope.Header | TensorVCSError:
        try:
            return self.header(oid)
        except TensorVCSError as e:
            return e

    def _check_tree(
        self, root: str, children: dict[str, list[str]]
    ) -> dict[str, envelope.Header | TensorVCSError]:
        out: dict[str, envelope.Header | TensorVCSError] = {}
        stack: list[tuple[str, np.ndarray | None, int]] = [(root, None, 0)]
        while stack:
            oid, base, depth = stack.pop()
            try:
                if depth > MAX_DELTA_CHAIN:
                    raise CorruptObjectError(
                        f"object {oid} is corrupt: its delta chain is longer than "
                        f"{MAX_DELTA_CHAIN} deltas",
                        oid,
                    )
                content, h = self._decode_on(oid, base)
                self._check_structure(oid, h, content)
            except TensorVCSError as e:
                out[oid] = e
                for k in children.get(oid, []):  # a delta on a broken base: checked alone
                    stack.append((k, None, -1))
                continue
            out[oid] = h
            kids = children.get(oid, [])
            for i, k in enumerate(kids):
                stack.append((k, content if i == len(kids) - 1 else content.copy(), depth + 1))
        return out

    def _decode_on(self, oid: str, base: np.ndarray | None) -> tuple[np.ndarray, envelope.Header]:
        """Decode ``oid`` (a delta applied in place on ``base``, its base's content) and
        verify its hash (and its checksum); with ``base`` None, decode it as ``read(full=True)``
        does."""
        if base is None:
            h, content = self.read(oid, full=True)
            return content, h
        data = self._view(oid)
        h = envelope.read_header(data, oid)
        if h.length != base.nbytes:
            raise CorruptObjectError(
                f"object {oid} is corrupt: it does not fit its delta base "
                f"({h.length} bytes against {base.nbytes})",
                oid,
            )
        payload = memoryview(data)[h.payload_offset :]
        envelope.check_fits(h, payload, oid)
        codecs.decode_delta_into(h.params, payload, base, oid)
        if not self._matches(oid, h, base, True):
            raise CorruptObjectError(
                f"object {oid} is corrupt: its content hashes differently", oid
            )
        return base, h

    def _check_structure(self, oid: str, h: envelope.Header, content: np.ndarray) -> None:
        from ..format.commit import Commit
        from ..format.manifest import Manifest

        try:
            if h.kind == envelope.KIND_MANIFEST:
                Manifest.from_bytes(content.data, oid)
            elif h.kind == envelope.KIND_COMMIT:
                Commit.from_bytes(content.data, oid)
        except (CorruptObjectError, ObjectNotFoundError):
            raise
        except TensorVCSError as e:  # any other refusal of stored bytes is corruption here
            raise CorruptObjectError(f"object {oid}: {e}", oid) from e

    def check(self, oid: str) -> envelope.Header:
        """Read and verify one object (its whole delta chain, its hash and its checksum); a
        manifest or a commit is also parsed and validated, so a well-hashed but malformed one
        is found. Raises CorruptObjectError / ObjectNotFoundError only."""
        h, content = self.read(oid, full=True)
        self._check_structure(oid, h, content)
        return h


def _base_id(oid: str, h: envelope.Header) -> str:
    base = h.params.get("base")
    if not isinstance(base, str) or not is_object_id(base):
        raise CorruptObjectError(f"object {oid} is a delta without a valid base id", oid)
    return base


__all__ = ["OBJECTS", "CorruptObjectError", "ObjectStore", "object_name"]
