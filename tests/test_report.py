"""tvcs report: the data behind each chart against independent computations, no tensor
bytes read for commits with recorded statistics, commits without them measured the same way,
ranges, the storage figures against `tvcs du`, a self-contained page, and the CLI verb.
(The page in a real browser: test_report_browser.py.)"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import tensorvcs as tv
from tensorvcs.cli import cli
from tensorvcs.format import envelope
from tensorvcs.report import build, write_report
from tensorvcs.report.data import OPTIMIZER, OTHER, WEIGHTS, group_of, module_of
from tensorvcs.state.writer import TensorWriter
from tensorvcs.store.base import View
from tensorvcs.store.local import LocalStore
from tensorvcs.store.objects import object_name

STEPS = 5


def _train(repo: tv.Repo, steps: int = STEPS, nan_at: int | None = None, seed: int = 0) -> None:
    """``steps`` commits of a small MLP trained with AdamW: metrics loss and lr, step 10*i,
    layer 2's weight frozen; with ``nan_at``, that commit's 3.bias holds one NaN."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 24), torch.nn.ReLU(), torch.nn.Linear(24, 24), torch.nn.Linear(24, 3)
    )
    model[2].weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for i in range(1, steps + 1):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        weights = dict(model.state_dict())
        if i == nan_at:
            bad = weights["3.bias"].clone()
            bad[1] = float("nan")
            weights["3.bias"] = bad
        state = {"model": weights, "optimizer": opt.state_dict(), "epoch": 0}
        repo.commit(state, f"step {i}", step=10 * i, metrics={"loss": loss.item(), "lr": 0.01 / i})


@pytest.fixture
def run(tmp_path: Path) -> Any:
    r = tv.Repo.init(tmp_path / "run")
    _train(r, nan_at=4)
    r.tag("best", "HEAD~3")
    yield r
    r.close()


def _relative_changes(repo: tv.Repo) -> dict[str, list[float | None]]:
    """‖Δ‖/‖W‖ per weight tensor per commit (oldest first), from checked-out tensors."""
    ids = [c.id for c in reversed(repo.log())]
    states = [repo.checkout(i)["model"] for i in ids]
    out: dict[str, list[float | None]] = {}
    for key in states[-1]:
        row: list[float | None] = [None]
        for prev, cur in itertools.pairwise(states):
            a, b = cur[key].double(), prev[key].double()
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                row.append(math.nan if not torch.isfinite(a).all() else None)
                continue
            row.append(float((a - b).norm() / a.norm()))
        out[f"model/{key}"] = row
    return out


def _same(a: list[float | None], b: list[float | None]) -> bool:
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            if x is not y:
                return False
        elif math.isnan(x) or math.isnan(y):
            if not (math.isnan(x) and math.isnan(y)):
                return False
        elif not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-15):  # docs/format.md: about 1e-6
            return False
    return True


# -- the data behind the charts --------------------------------------------------------------------
def test_heatmap_values_are_relative_changes_of_the_weights(run: tv.Repo) -> None:
    data, _ = build(run)
    expected = _relative_changes(run)
    assert [h.key for h in data.heat] == list(expected)  # the model's own order
    for h in data.heat:
        assert _same(h.values, expected[h.key]), h.key
    frozen = next(h for h in data.heat if h.key == "model/2.weight")
    assert frozen.values == [None, 0.0, 0.0, 0.0, 0.0]
    assert [h.module for h in data.heat][:2] == ["model.0", "model.0"]
    assert data.measured_commits == 0 and data.measured_bytes == 0


def test_metrics_steps_refs_and_nonfinite(run: tv.Repo) -> None:
    run.branch("side", "HEAD~1")
    data, _ = build(run)
    log = list(reversed(run.log()))
    assert data.metrics == ["loss", "lr"]
    assert [c.step for c in data.commits] == [10, 20, 30, 40, 50]
    assert [c.x for c in data.commits] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert data.x_label == "step"
    assert [c.metrics for c in data.commits] == [c.metrics for c in log]
    assert [c.parents for c in data.commits] == [[]] + [[c.id] for c in log[:-1]]
    assert data.commits[1].refs == ["tag: best"]
    assert data.commits[3].refs == ["side"]
    assert data.commits[4].refs == ["HEAD -> main"]
    assert [c.nonfinite for c in data.commits] == [[], [], [], [("model/3.bias", 1, 0)], []]


def test_groups_and_modules() -> None:
    f32 = "float32"
    assert group_of(("model", "encoder.layer.0.attention.self.query.weight"), f32) == WEIGHTS
    assert group_of(("optimizer", "state", 3, "exp_avg"), f32) == OPTIMIZER
    assert group_of(("ckpt.pt", "optimizer_states", 0, "state", 1, "exp_avg_sq"), f32) == OPTIMIZER
    assert group_of(("state", 0, "momentum_buffer"), "bfloat16") == OPTIMIZER
    assert group_of(("optimizer", "state", 3, "step"), f32) == OPTIMIZER
    assert group_of(("optimizer", "state", 3, "step"), "int64") == OTHER
    assert group_of(("rng", "torch"), "uint8") == OTHER
    assert group_of(("model", "embeddings.position_ids"), "int64") == OTHER
    assert module_of("model/encoder.layer.3.attention.self.query.weight") == (
        "model.encoder.layer.3"
    )
    assert module_of("model/embeddings.word_embeddings.weight") == (
        "model.embeddings.word_embeddings"
    )
    assert module_of("model/0.weight") == "model.0"
    assert module_of("w") == "w"


def test_storage_matches_du_and_reused_bytes_are_the_unchanged_tensors(run: tv.Repo) -> None:
    data, _ = build(run)
    res = CliRunner().invoke(cli, ["--repo", str(run.root), "du", "--json"])
    assert res.exit_code == 0, res.output
    du = json.loads(res.stdout)["commits"]
    before = 0
    for c, row in zip(data.commits, du, strict=True):
        assert c.id == row["id"]
        # the groups add up to what du counts as the commit's new stored bytes (packs split
        # between groups by integer shares: at most one byte lost per group and object)
        assert 0 <= row["stored_bytes"] - sum(c.new_bytes.values()) <= 3 * 40
        assert c.store_bytes - before == row["stored_bytes"]
        before = c.store_bytes
        assert c.logical_bytes == row["logical_bytes"]
    frozen = 24 * 24 * 4  # layer 2's weight never changes: reused from the second commit on
    assert [c.reused_bytes[WEIGHTS] for c in data.commits] == [0] + [frozen] * 4
    assert all(c.new_bytes[WEIGHTS] > 0 and c.new_bytes[OPTIMIZER] > 0 for c in data.commits)
    # one torch.save file per commit, estimated from the logical bytes (API commits: no files)
    assert all(not c.torch_save_exact for c in data.commits)
    assert data.torch_save_bytes == sum(c.torch_save_bytes for c in data.commits)
    assert all(c.torch_save_bytes > c.logical_bytes for c in data.commits)


def test_file_commits_use_the_files_sizes(tmp_path: Path) -> None:
    r = tv.Repo.init(tmp_path)
    sizes = []
    for i in range(3):
        torch.save({"w": torch.full((64, 64), float(i)), "step": i}, tmp_path / "ckpt.pt")
        sizes.append((tmp_path / "ckpt.pt").stat().st_size)
        res = CliRunner().invoke(
            cli, ["--repo", str(tmp_path), "commit", str(tmp_path / "ckpt.pt"), "-m", f"c{i}"]
        )
        assert res.exit_code == 0, res.output
    data, _ = build(r)
    assert [c.torch_save_bytes for c in data.commits] == sizes
    assert all(c.torch_save_exact for c in data.commits)
    assert [h.key for h in data.heat] == ["ckpt.pt/w"]
    assert data.x_label == "commit"  # no steps recorded: commits are numbered
    assert [c.x for c in data.commits] == [0.0, 1.0, 2.0]
    r.close()


# -- no tensor bytes read --------------------------------------------------------------------------
class CountingStore(LocalStore):
    """The real local store, noting every file it reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, name: str) -> bytes:
        self.reads.append(name)
        return super().get(name)

    def get_head(self, name: str, n: int) -> bytes:
        self.reads.append(name)
        return super().get_head(name, n)

    def get_view(self, name: str) -> View:
        self.reads.append(name)
        return super().get_view(name)


def test_recorded_statistics_read_no_tensor_bytes(run: tv.Repo) -> None:
    kinds = {}
    for oid in run.objects.ids():
        kinds[object_name(oid)] = run.objects.kind(oid)
    store = CountingStore(run.root / ".tvcs")
    counted = tv.Repo(run.root, store, run.config)
    data, _ = build(counted)
    read = [kinds[n] for n in store.reads if n in kinds]
    assert read and set(read) <= {envelope.KIND_COMMIT, envelope.KIND_MANIFEST}
    assert data.measured_commits == 0
    counted.close()


def test_report_without_tensor_objects(run: tv.Repo, tmp_path: Path) -> None:
    """A copy of the repository with every tensor object deleted still gives the same
    heatmap, metrics and warnings: they come from commits and manifests only."""
    full, _ = build(run)
    copy = tmp_path / "copy"
    shutil.copytree(run.root / ".tvcs", copy / ".tvcs")
    r = tv.Repo.open(copy)
    deleted = 0
    for oid in list(r.objects.ids()):
        if r.objects.kind(oid) not in (envelope.KIND_COMMIT, envelope.KIND_MANIFEST):
            r.objects.delete(oid)
            deleted += 1
    assert deleted >= STEPS  # small tensors: one new pack per commit
    data, page = build(r)
    assert [h.values for h in data.heat] == [h.values for h in full.heat] or all(
        _same(a.values, b.values) for a, b in zip(data.heat, full.heat, strict=True)
    )
    assert [c.nonfinite for c in data.commits] == [c.nonfinite for c in full.commits]
    assert [c.metrics for c in data.commits] == [c.metrics for c in full.commits]
    assert data.missing_objects == deleted
    assert f"{deleted} objects the manifests name are not in the store" in page
    r.close()


# -- commits without recorded statistics -----------------------------------------------------------
def test_commits_without_statistics_are_measured(tmp_path: Path, monkeypatch: Any) -> None:
    """Commits written without statistics (as before they existed: version-1 manifests
    without a stats field) give the same report data, measured from their tensors."""
    with_stats = tv.Repo.init(tmp_path / "a")
    _train(with_stats, nan_at=3)
    monkeypatch.setattr(TensorWriter, "record_stats", False)
    without = tv.Repo.init(tmp_path / "b")
    _train(without, nan_at=3)
    monkeypatch.undo()
    assert all(t.stats is None for t in without.tensors())
    assert all(t.stats is not None for t in with_stats.tensors())
    a, _ = build(with_stats)
    b, _ = build(without)
    assert b.measured_commits == STEPS and a.measured_commits == 0
    # each distinct tensor content read once, plus the parents' versions of changed tensors
    logical = sum(c.logical_bytes for c in b.commits)
    assert 0 < b.measured_bytes <= 2 * logical
    assert [h.key for h in a.heat] == [h.key for h in b.heat]
    for x, y in zip(a.heat, b.heat, strict=True):
        assert _same(x.values, y.values), x.key
    assert [c.nonfinite for c in a.commits] == [c.nonfinite for c in b.commits]
    assert [c.stats_recorded for c in b.commits] == [False] * STEPS
    with_stats.close()
    without.close()


# -- ranges ----------------------------------------------------------------------------------------
def test_ranges(run: tv.Repo) -> None:
    ids = [c.id for c in reversed(run.log())]
    data, _ = build(run, "HEAD~3..HEAD")
    assert [c.id for c in data.commits] == ids[2:]
    assert data.commits[0].parents == []  # its parent is outside the range
    # the objects the parent outside the range had are not new in the range
    full, _ = build(run)
    assert data.commits[0].reused_bytes == full.commits[2].reused_bytes
    assert data.commits[0].new_bytes == full.commits[2].new_bytes
    one, _ = build(run, "best")
    assert [c.id for c in one.commits] == ids[:2]


# -- the page --------------------------------------------------------------------------------------
def test_page_is_self_contained(run: tv.Repo, tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    data = write_report(run, out)
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://|//cdn|<link|@import|url\(|\ssrc=", page)
    heat = json.loads(re.search(r'id="heat-data">(.*?)</script>', page, re.S).group(1))
    assert heat["keys"] == [h.key for h in data.heat]
    assert heat["ids"] == [c.id[:12] for c in data.commits]
    assert heat["values"][[h.key for h in data.heat].index("model/3.bias")][3] == "nan"
    for needed in (
        'id="metrics"',
        'class="metric-chart"',
        'class="heatmap"',
        'class="storage-chart"',
        'id="commits"',
        "NaN/Inf in 1 tensor(s)",
    ):
        assert needed in page
    assert page.count("<tr>") == STEPS + 1


def test_metric_names_and_messages_are_escaped(tmp_path: Path) -> None:
    r = tv.Repo.init(tmp_path)
    for i in range(2):
        r.commit(
            {"w": torch.ones(4) * i},
            "<script>alert(1)</script>",
            step=i,
            metrics={"</script><b>": 1.0 + i},
        )
    _, page = build(r)
    assert "<script>alert(1)" not in page and "</script><b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    r.close()


def test_metrics_no_float_holds_are_left_out_of_the_chart(tmp_path: Path) -> None:
    """A commit may store an integer metric of any size; the report plots the numbers a float
    holds and leaves the others out (it raised OverflowError)."""
    r = tv.Repo.init(tmp_path)
    huge = [10**400, 2**1024 - 1, 2**1023]
    for i, n in enumerate(huge):
        r.commit({"w": torch.ones(4) * i}, f"c{i}", step=i, metrics={"loss": 1.0 / (i + 1),
                                                                   "tokens": n})
    data, page = build(r)
    assert data.metrics == ["loss", "tokens"]
    assert [c.metrics for c in data.commits] == [
        {"loss": 1.0}, {"loss": 0.5}, {"loss": 1.0 / 3, "tokens": float(2**1023)}
    ]
    assert "c0" in page and "c2" in page
    r.close()


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_report(run: tv.Repo, tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    res = CliRunner().invoke(cli, ["--repo", str(run.root), "report", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert re.fullmatch(
        rf"wrote {re.escape(str(out))}: 5 commits, 2 metric\(s\), 6 layers; 1 commit\(s\) with "
        r"NaN/Inf \([0-9.]+ s\)\n",
        res.stdout,
    )
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(
        cli, ["--repo", str(run.root), "report", "HEAD~2..HEAD", "-o", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["commits"] == 2 and doc["metrics"] == ["loss", "lr"] and doc["layers"] == 6
    assert doc["stats_recorded_commits"] == 2 and doc["measured_commits"] == 0
    assert doc["nonfinite_commits"] == [run.resolve("HEAD~1")]  # the NaN at step 40


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nosuch"], 4, "tvcs: error: unknown revision 'nosuch'"),
        (["HEAD.."], 2, "tvcs: error: bad revision range 'HEAD..' (use REV or A..B)"),
        (["HEAD..HEAD"], 2, "tvcs: error: nothing to report for 'HEAD..HEAD': the range is empty"),
    ],
)
def test_cli_report_errors(
    run: tv.Repo, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "x.html"
    res = CliRunner().invoke(cli, ["--repo", str(run.root), "report", *args, "-o", str(out)])
    assert res.exit_code == code
    assert res.stderr.splitlines()[0].startswith(message), res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert not out.exists()


def test_cli_report_of_an_empty_repository(tmp_path: Path) -> None:
    tv.Repo.init(tmp_path).close()
    res = CliRunner().invoke(cli, ["--repo", str(tmp_path), "report", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert res.stderr == (
        "tvcs: error: nothing to report for 'HEAD': the repository has no commits\n"
    )
