"""What ``tvcs report`` shows, gathered from a repository (no HTML here: see page.py).

Everything comes from commits and manifests: metrics and steps from the commits; per-tensor
NaN/Inf counts, norms and change norms from the statistics the writer recorded in the
manifest (format/stats.py); storage from the object ids each manifest names and the size
each object takes in the store (a ``stat``, not a read). So for commits with recorded
statistics no tensor byte is read. A commit without them (written before statistics
existed: a version-1 manifest without ``stats``) has its tensors read and measured here, the
same way the writer measures them; an unchanged tensor is measured once for all the commits
that share it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import TensorVCSError, UsageError
from ..format.commit import Commit
from ..format.manifest import Manifest, TensorEntry
from ..format.stats import TensorStats, relative, with_change
from ..format.values import KeyPath, as_float, path_str, walk_leaves
from ..repo import Repo
from ..state.reader import TensorReader
from ..state.stats import compute_stats

WEIGHTS = "weights"
OPTIMIZER = "optimizer moments"
OTHER = "other"
GROUPS = (WEIGHTS, OPTIMIZER, OTHER)

# key path parts that put a tensor under an optimizer's state
_OPTIMIZER_PARTS = ("optimizer", "optimizers", "optimizer_states", "optim", "opt")
# state names of torch.optim's per-parameter buffers (found anywhere: a bare optimizer state dict)
_MOMENT_NAMES = frozenset(
    {
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
        "momentum_buffer",
        "square_avg",
        "acc_delta",
        "exp_inf",
        "ax",
        "prev",
        "sum",
        "mu_product",
    }
)
_FLOAT_DTYPES = frozenset(
    {
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
    }
)


def group_of(path: KeyPath, dtype: str) -> str:
    """weights (floating-point tensors outside the optimizer), optimizer moments (the
    optimizer's floating-point buffers), other (integer and bool tensors: steps, RNG states,
    token ids...)."""
    if dtype not in _FLOAT_DTYPES:
        return OTHER
    parts = [str(p).lower() for p in path]
    if parts and parts[-1] in _MOMENT_NAMES:
        return OPTIMIZER
    if any(p in _OPTIMIZER_PARTS or p.startswith("optimizer") for p in parts[:-1]):
        return OPTIMIZER
    return WEIGHTS


def module_of(key: str) -> str:
    """The module a parameter's key path belongs to, for grouping heatmap rows: the key up to
    and including its first numeric part (``model/encoder.layer.3``), else its parent."""
    parts = key.replace("/", ".").split(".")
    for i, p in enumerate(parts):
        if p.isdigit() and i > 0:
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or key


@dataclass
class Tensor:
    """One tensor leaf of one commit."""

    key: str
    dtype: str
    shape: list[int]
    nbytes: int
    group: str
    stats: TensorStats | None
    recorded: bool  # stats came from the manifest (False: measured by the report)


@dataclass
class CommitInfo:
    id: str
    parents: list[str]  # the parents inside the report's range
    step: int | None
    x: float  # position on the step axis
    message: str
    author: str
    timestamp: str
    metrics: dict[str, float]
    refs: list[str]  # "tag: best", "main", "HEAD -> main"
    nonfinite: list[tuple[str, int, int]]  # (key path, NaN count, Inf count)
    stats_recorded: bool
    logical_bytes: int
    torch_save_bytes: int
    torch_save_exact: bool  # the committed files' own sizes (else estimated)
    new_bytes: dict[str, int] = field(default_factory=dict)  # stored bytes of new objects
    reused_bytes: dict[str, int] = field(default_factory=dict)  # logical bytes of reused tensors
    store_bytes: int = 0  # the store's size after this commit (its objects and all before)
    torch_save_total: int = 0  # a folder of one torch.save file per commit, up to this one


@dataclass
class HeatRow:
    key: str
    module: str
    values: list[float | None]  # per commit: ‖Δ‖/‖W‖; nan: the tensor is not finite


@dataclass
class ReportData:
    title: str
    rev_range: str
    commits: list[CommitInfo]  # oldest first
    metrics: list[str]
    heat: list[HeatRow]
    x_label: str
    measured_commits: int = 0  # commits whose statistics the report computed
    measured_bytes: int = 0  # tensor bytes it read for that
    missing_objects: int = 0  # objects a manifest names that the store lacks (sized 0)
    build_seconds: float = 0.0

    @property
    def store_bytes(self) -> int:
        return self.commits[-1].store_bytes if self.commits else 0

    @property
    def torch_save_bytes(self) -> int:
        return self.commits[-1].torch_save_total if self.commits else 0


# -- the commits of a range --------------------------------------------------------------------
def select_commits(repo: Repo, rev_range: str) -> list[str]:
    """Commit ids of ``REV`` (its history) or ``A..B`` (B's history without A's), oldest
    first."""
    text = rev_range.strip()
    if ".." in text:
        a, _, b = text.partition("..")
        if not a or not b or ".." in b:
            raise UsageError(f"bad revision range {rev_range!r} (use REV or A..B)")
        exclude = {c.id for c in repo.log(a)}
        commits = [c for c in repo.log(b) if c.id not in exclude]
    else:
        commits = repo.log(text or "HEAD")
    if not commits:
        what = "the repository has no commits" if ".." not in text else "the range is empty"
        raise UsageError(f"nothing to report for {rev_range!r}: {what}")
    return [c.id for c in reversed(commits)]


def decorations(repo: Repo) -> dict[str, list[str]]:
    """{commit id: ["HEAD -> main", "other", "tag: v1"]}, as git log --decorate."""
    out: dict[str, list[str]] = {}
    current, head = repo.head()
    branches = repo.branches()
    if head is not None and current is None:
        out.setdefault(head, []).append("HEAD")
    for name, oid in sorted(branches.items()):
        out.setdefault(oid, []).append(f"HEAD -> {name}" if name == current else name)
    for name, oid in sorted(repo.tags().items()):
        out.setdefault(oid, []).append(f"tag: {name}")
    return out


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics a chart can plot: numbers (not bools) as floats; an integer no float holds
    (``10**400``, which a commit may store) is left out, as a string metric is."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        f = as_float(v)
        if f is not None:
            out[str(k)] = f
    return out


# -- statistics of a commit without recorded ones -------------------------------------------------
class _Measurer:
    """Statistics for commits that have none recorded, reading their tensors and measuring
    them as the writer does (state/stats.py compute_stats): each distinct content once; the
    change norm needs the parent's version too."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.reader = TensorReader(repo.objects, repo.pool)
        self.by_content: dict[tuple[Any, ...], TensorStats] = {}
        self.bytes_read = 0
        self._loaded: tuple[str, dict[str, torch.Tensor]] | None = None

    def _read(self, manifest: Manifest, keys: set[str] | None) -> dict[str, torch.Tensor]:
        def select(path: KeyPath) -> bool:
            return keys is None or path_str(path) in keys

        wanted, paths = manifest.selected_tensors(select=select)
        got = self.reader.read(wanted, lambda i: path_str(paths[i]))
        self.bytes_read += sum(e.nbytes for e in wanted.values())
        return {path_str(paths[i]): t.detach() for i, t in got.items()}

    def stats(
        self, commit_id: str, manifest: Manifest, parent: tuple[str, Manifest] | None
    ) -> dict[str, TensorStats]:
        """{key path: statistics} of every tensor leaf of ``manifest``."""
        entries = _entries(manifest)
        parent_entries = _entries(parent[1]) if parent else {}
        need: set[str] = set()
        out: dict[str, TensorStats] = {}
        for key, e in entries.items():
            ck = e.content_key()
            pe = parent_entries.get(key)
            known = self.by_content.get(ck)
            if known is not None and pe is not None and pe.content_key() == ck:
                out[key] = _with_delta(known, 0.0 if known.nonfinite == 0 else None)
            elif known is not None and (pe is None or pe.dtype != e.dtype or pe.shape != e.shape):
                out[key] = _with_delta(known, None)
            else:
                need.add(key)
        if need:
            tensors = self._read(manifest, need)
            parent_tensors: dict[str, torch.Tensor] = {}
            if parent is not None:
                pneed = {k for k in need if k in parent_entries}
                if self._loaded is not None and self._loaded[0] == parent[0]:
                    parent_tensors = {k: v for k, v in self._loaded[1].items() if k in pneed}
                    pneed -= set(parent_tensors)
                if pneed:
                    parent_tensors.update(self._read(parent[1], pneed))
            for key in need:
                s = compute_stats(tensors[key], parent_tensors.get(key))
                if s is None:  # a dtype without statistics
                    continue
                out[key] = s
                self.by_content.setdefault(entries[key].content_key(), _with_delta(s, None))
            self._loaded = (commit_id, tensors)
        return out


def _with_delta(s: TensorStats, delta: float | None) -> TensorStats:
    return TensorStats(s.numel, s.nan, s.inf, s.min, s.max, s.mean, s.norm, delta)


def _entries(m: Manifest) -> dict[str, TensorEntry]:
    out: dict[str, TensorEntry] = {}
    for path, node in walk_leaves(m.tree):
        if isinstance(node, list) and node and node[0] in ("tensor", "ndarray"):
            out.setdefault(path_str(path), m.tensors[int(node[1])])
    return out


def _leaves(m: Manifest) -> Iterable[tuple[KeyPath, TensorEntry]]:
    seen: set[str] = set()
    for path, node in walk_leaves(m.tree):
        if isinstance(node, list) and node and node[0] in ("tensor", "ndarray"):
            key = path_str(path)
            if key not in seen:
                seen.add(key)
                yield path, m.tensors[int(node[1])]


# -- storage -------------------------------------------------------------------------------------
class _Sizes:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.sizes: dict[str, int] = {}
        self.missing = 0

    def __call__(self, oid: str) -> int:
        n = self.sizes.get(oid)
        if n is None:
            try:
                n = self.repo.objects.stored_size(oid)
            except (OSError, TensorVCSError):
                n = 0
                self.missing += 1
            self.sizes[oid] = n
        return n


def _storage(
    m: Manifest, commit_id: str, manifest_id: str, seen: set[str], size: _Sizes
) -> tuple[dict[str, int], dict[str, int], int]:
    """(new stored bytes by group, reused logical bytes by group, new stored bytes in all) of
    one commit; ``seen`` (the objects of the commits before) is updated. A new object that
    several tensors share (a pack) is split between their groups by their bytes."""
    new = dict.fromkeys(GROUPS, 0)
    reused = dict.fromkeys(GROUPS, 0)
    claims: dict[str, dict[str, int]] = {}  # new object -> {group: logical bytes}
    for path, e in _leaves(m):
        g = group_of(path, e.dtype)
        oids = e.object_ids()
        fresh = [o for o in oids if o not in seen]
        if not fresh:
            reused[g] += e.nbytes
        for o in fresh:
            share = claims.setdefault(o, {})
            share[g] = share.get(g, 0) + max(e.nbytes, 1)
    for f in m.files:
        for oid, n in f.chunks:
            if oid not in seen:
                share = claims.setdefault(oid, {})
                share[OTHER] = share.get(OTHER, 0) + n
    for oid in m.object_ids():  # opaque pickles of values
        if oid not in seen and oid not in claims:
            claims[oid] = {OTHER: 1}
    total = 0
    for oid, share in claims.items():
        n = size(oid)
        total += n
        whole = sum(share.values())
        for g, part in share.items():
            new[g] += n * part // whole
    seen.update(claims)
    meta = size(commit_id) + (size(manifest_id) if manifest_id not in seen else 0)
    seen.add(manifest_id)
    seen.add(commit_id)
    new[OTHER] += meta
    return new, reused, total + meta


def _logical(m: Manifest) -> tuple[int, int, bool]:
    """(logical bytes of the commit, the size of its torch.save equivalent, exact?): the sizes
    of the files it recorded when it recorded files; else the tensors' bytes plus a small
    allowance per tensor for torch.save's zip entries and pickle (an estimate)."""
    tensors = sum(e.nbytes for _, e in _leaves(m))
    blobs = sum(n for f in m.files for _, n in f.chunks)
    if m.files:
        return tensors + blobs, sum(f.size for f in m.files), True
    count = sum(1 for _ in _leaves(m))
    return tensors, tensors + 2048 + 160 * count, False


# -- the whole report -----------------------------------------------------------------------------
def gather(repo: Repo, rev_range: str = "HEAD", title: str | None = None) -> ReportData:
    """The data of the report of ``rev_range`` (``REV`` or ``A..B``)."""
    ids = select_commits(repo, rev_range)
    inside = set(ids)
    decos = decorations(repo)
    commits = [repo.get_commit(i) for i in ids]
    all_steps = all(c.step is not None for c in commits)
    measurer: _Measurer | None = None
    size = _Sizes(repo)
    seen: set[str] = set()
    # objects of the parents just outside an A..B range exist already: not new in the range
    for c in commits:
        for p in c.parents:
            if p not in inside:
                pm = repo.get_manifest(repo.get_commit(p).manifest)
                seen.update(pm.object_ids())
                seen.update((p, repo.get_commit(p).manifest))
    infos: list[CommitInfo] = []
    weights: dict[str, list[float | None]] = {}
    order: list[str] = []
    metric_names: list[str] = []
    measured = 0
    manifests: dict[str, Manifest] = {}
    store_total = 0
    ts_total = 0
    for col, c in enumerate(commits):
        m = repo.get_manifest(c.manifest)
        manifests[c.id] = m
        infos_tensors: list[Tensor] = []
        leaves = list(_leaves(m))
        recorded = all(e.stats is not None for _, e in leaves)
        computed: dict[str, TensorStats] = {}
        if not recorded:
            if measurer is None:
                measurer = _Measurer(repo)
            parent_id = c.parents[0] if c.parents else None
            parent: tuple[str, Manifest] | None = None
            if parent_id is not None:
                known = manifests.get(parent_id)
                if known is None:
                    known = repo.get_manifest(repo.get_commit(parent_id).manifest)
                parent = (parent_id, known)
            computed = measurer.stats(c.id, m, parent)
            measured += 1
        before = _parent_entries(repo, c, manifests)
        for path, e in leaves:
            key = path_str(path)
            if e.stats is not None:  # the content's statistics, the change from the commit
                prev = before.get(key)
                same = prev is not None and prev.content_key() == e.content_key()
                s = with_change(e.stats, c.changes.get(key), same)
            else:
                s = computed.get(key)
            g = group_of(path, e.dtype)
            infos_tensors.append(Tensor(key, e.dtype, e.shape, e.nbytes, g, s, e.stats is not None))
            if g == WEIGHTS:
                if key not in weights:
                    weights[key] = [None] * len(commits)
                    order.append(key)
                weights[key][col] = _change(s)
        nonfinite = [
            (t.key, t.stats.nan, t.stats.inf)
            for t in infos_tensors
            if t.stats is not None and t.stats.nonfinite
        ]
        new, reused, new_total = _storage(m, c.id, c.manifest, seen, size)
        logical, ts_bytes, exact = _logical(m)
        store_total += new_total
        ts_total += ts_bytes
        metrics = numeric_metrics(c.metrics)
        for k in metrics:
            if k not in metric_names:
                metric_names.append(k)
        subject = c.message.splitlines()[0] if c.message else ""
        infos.append(
            CommitInfo(
                id=c.id,
                parents=[p for p in c.parents if p in inside],
                step=c.step,
                x=float(c.step) if all_steps and c.step is not None else float(col),
                message=subject,
                author=c.author,
                timestamp=c.timestamp,
                metrics=metrics,
                refs=decos.get(c.id, []),
                nonfinite=nonfinite,
                stats_recorded=recorded,
                logical_bytes=logical,
                torch_save_bytes=ts_bytes,
                torch_save_exact=exact,
                new_bytes=new,
                reused_bytes=reused,
                store_bytes=store_total,
                torch_save_total=ts_total,
            )
        )
    heat = [HeatRow(k, module_of(k), weights[k]) for k in _row_order(order, manifests, ids)]
    return ReportData(
        title=title or f"tensorvcs report: {rev_range}",
        rev_range=rev_range,
        commits=infos,
        metrics=metric_names,
        heat=heat,
        x_label="step" if all_steps else "commit",
        measured_commits=measured,
        measured_bytes=measurer.bytes_read if measurer else 0,
        missing_objects=size.missing,
    )


def _parent_entries(
    repo: Repo, c: Commit, manifests: dict[str, Manifest]
) -> dict[str, TensorEntry]:
    """{key path: entry} of ``c``'s first parent (empty for a root commit)."""
    if not c.parents:
        return {}
    m = manifests.get(c.parents[0])
    if m is None:
        m = manifests[c.parents[0]] = repo.get_manifest(repo.get_commit(c.parents[0]).manifest)
    return m.tensors_by_key()


def _change(s: TensorStats | None) -> float | None:
    """The heatmap's value: ‖Δ‖/‖W‖ (nan when the tensor holds NaN or Inf, None unknown)."""
    if s is None:
        return None
    if s.nonfinite:
        return math.nan
    return relative(s.delta_norm, s.norm)


def _row_order(order: list[str], manifests: dict[str, Manifest], ids: list[str]) -> list[str]:
    """Rows in the newest commit's key order (the model's own order), keys only older commits
    had after them."""
    newest = [path_str(p) for p, _ in _leaves(manifests[ids[-1]])]
    known = set(order)
    first = [k for k in newest if k in known]
    rest = [k for k in order if k not in set(first)]
    return first + rest
