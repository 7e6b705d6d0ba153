"""Multi-process DCP tests: torch.distributed with gloo on CPU, ranks as subprocesses
(tests/dcp/_worker.py), rendezvous through a file:// store.

To fit a small time budget the independent runs start together at module setup: the chain
save (2 ranks, FSDP2) → load + save (3 ranks) → load + killed save (2 ranks); two concurrent
2-rank jobs on one repository (with gc running beside them); a coordinator killed inside
finish; and the Lightning run when lightning is installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import tensorvcs as tv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
warnings.filterwarnings("ignore", message="torch.distributed is disabled")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker.py"
LIGHTNING_WORKER = HERE / "_lightning_worker.py"
TIMEOUT = 300.0

try:
    import lightning  # noqa: F401

    HAVE_LIGHTNING = True
except ImportError:
    HAVE_LIGHTNING = False


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


class Ranks:
    """N processes of one scenario, started at once."""

    def __init__(self, name: str, cmds: list[list[str]], logdir: Path) -> None:
        self.name = name
        self.logs = [logdir / f"{name}-{i}.log" for i in range(len(cmds))]
        self.procs = []
        for cmd, log in zip(cmds, self.logs, strict=True):
            with open(log, "wb") as f:
                self.procs.append(
                    subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env())
                )

    def wait(self, timeout: float = TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                raise AssertionError(f"{self.name}: timed out\n{self.output()}") from None
        return codes

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in self.logs)


def ranks(name: str, world: int, repo: Path, out: Path, scenario: str | None = None) -> Ranks:
    init = f"file://{out / f'pg-{name}'}"
    cmds = [
        [sys.executable, str(WORKER), scenario or name, "--rank", str(r), "--world", str(world),
         "--init", init, "--repo", str(repo), "--out", str(out)]
        for r in range(world)
    ]
    return Ranks(name, cmds, out)


def report(out: Path, scenario: str, rank: int) -> dict[str, Any]:
    return json.loads((out / f"{scenario}-rank{rank}.json").read_text())


class Runs:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.out = base / "out"
        self.out.mkdir()
        self.repo = base / "chain"
        tv.Repo.init(self.repo, chunk_size=4096, pack_threshold=1024).close()
        self.conc_repo = base / "conc"
        tv.Repo.init(self.conc_repo, chunk_size=4096, pack_threshold=1024).close()
        self.kf_repo = base / "killfinish"
        tv.Repo.init(self.kf_repo).close()
        self.lit_repo = base / "lit"
        tv.Repo.init(self.lit_repo, chunk_size=4096, pack_threshold=1024).close()
        self.codes: dict[str, list[int]] = {}
        self.errors: dict[str, str] = {}
        self.done = {k: threading.Event() for k in ("chain", "conc", "killfinish", "lightning")}
        self.gc_runs = 0
        threading.Thread(target=self._chain, daemon=True).start()
        threading.Thread(target=self._conc, daemon=True).start()
        threading.Thread(target=self._killfinish, daemon=True).start()
        if HAVE_LIGHTNING:
            threading.Thread(target=self._lightning, daemon=True).start()

    def _run(self, key: str, fn: Any) -> None:
        try:
            fn()
        except BaseException as e:  # reported by the test that waits for it
            self.errors[key] = f"{type(e).__name__}: {e}"
        finally:
            self.done[key].set()

    def _chain(self) -> None:
        def go() -> None:
            for name, world in (("save2", 2), ("load3", 3), ("kill", 2)):
                r = ranks(name, world, self.repo, self.out)
                self.codes[name] = r.wait()
                if name != "kill" and self.codes[name] != [0] * world:
                    raise AssertionError(f"{name} failed {self.codes[name]}\n{r.output()}")
                self.codes[name + "-log"] = r.output()  # type: ignore[assignment]

        self._run("chain", go)

    def _conc(self) -> None:
        def go() -> None:
            r = ranks("concurrent", 4, self.conc_repo, self.out)
            repo = tv.Repo.open(self.conc_repo)
            try:
                while any(p.poll() is None for p in r.procs):  # gc beside the two jobs
                    tv.gc(repo, prune="now", reflog_expire="now")
                    self.gc_runs += 1
                    time.sleep(0.5)
            finally:
                repo.close()
            self.codes["concurrent"] = r.wait()
            if self.codes["concurrent"] != [0] * 4:
                raise AssertionError(f"concurrent failed\n{r.output()}")

        self._run("conc", go)

    def _killfinish(self) -> None:
        def go() -> None:
            kdir = self.out / "kf"
            kdir.mkdir()
            r = ranks("killfinish", 1, self.kf_repo, kdir)
            self.codes["killfinish"] = r.wait()

        self._run("killfinish", go)

    def _lightning(self) -> None:
        def go() -> None:
            ldir = self.out / "lit"
            ldir.mkdir()
            cmd = [sys.executable, str(LIGHTNING_WORKER), str(self.lit_repo), str(ldir)]
            r = Ranks("lightning", [cmd], ldir)
            self.codes["lightning"] = r.wait()
            if self.codes["lightning"] != [0]:
                raise AssertionError(f"lightning run failed\n{r.output()}")

        self._run("lightning", go)

    def wait(self, key: str) -> None:
        assert self.done[key].wait(TIMEOUT + 60), f"{key} did not finish"
        if key in self.errors:
            pytest.fail(self.errors[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    yield Runs(tmp_path_factory.mktemp("dcp-dist"))


def load_ref(runs: Runs, name: str) -> dict[str, Any]:
    return torch.load(runs.out / name, weights_only=True)


def flat_consolidated(repo: tv.Repo, rev: str) -> dict[str, Any]:
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    flat, _ = flatten_state_dict(tv.dcp.load_state(repo, rev))
    return dict(sorted(flat.items()))


def assert_same_flat(got: dict[str, Any], ref: dict[str, Any]) -> None:
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            g = got[k]
            assert g.dtype == v.dtype and g.shape == v.shape, k
            assert torch.equal(g.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
        else:
            assert got[k] == v, k


# -- the chain: 2 ranks → 3 ranks → 2 ranks (+ 1 rank here) ------------------------------------
def test_two_rank_fsdp2_save_and_unchanged_second_save(runs: Runs) -> None:
    runs.wait("chain")
    r0, r1 = report(runs.out, "save2", 0), report(runs.out, "save2", 1)
    first, unchanged = r0["first"], r0["unchanged"]
    # both ranks wrote their own shards
    assert first["per_rank"]["0"]["new_stored_bytes"] > 0
    assert first["per_rank"]["1"]["new_stored_bytes"] > 0 and r1["rank_first_new_bytes"] > 0
    # the same model saved again: no new object bytes; only a commit (~300 bytes) appears
    assert unchanged["new_stored_bytes"] == 0 and unchanged["new_objects"] == 0
    assert unchanged["objects_growth"] < 1024
    repo = tv.Repo.open(runs.repo)
    c_first, c_unch = repo.get_commit(first["commit"]), repo.get_commit(unchanged["commit"])
    assert c_unch.parents == [c_first.id] and c_unch.manifest == c_first.manifest
    assert c_first.step == 1 and c_first.message == "two ranks"


def test_async_save_after_a_step(runs: Runs) -> None:
    runs.wait("chain")
    r0 = report(runs.out, "save2", 0)
    a = r0["async"]
    repo = tv.Repo.open(runs.repo)
    assert repo.resolve("two-step2") == a["commit"]
    assert 0 < a["new_stored_bytes"] <= a["objects_growth"]
    assert_same_flat(flat_consolidated(repo, "two-step2"), load_ref(runs, "ref_step2.pt"))


def test_reshard_two_to_three_to_two_and_one(runs: Runs) -> None:
    runs.wait("chain")
    for r in range(3):
        assert report(runs.out, "load3", r)["bad_vs_two"] == []  # 2 → 3 ranks, bitwise
    assert report(runs.out, "kill", 0)["bad_3_to_2"] == []  # 3 → 2 ranks
    repo = tv.Repo.open(runs.repo)
    ref = load_ref(runs, "ref_two.pt")
    assert_same_flat(flat_consolidated(repo, "two"), ref)  # 2 → 1 rank
    assert_same_flat(flat_consolidated(repo, "three"), ref)  # 3 → 1 rank
    # the 3-rank commit really is sharded 3 ways
    items = repo.get_manifest(repo.show("three").manifest).dcp["items"]
    emb = next(it for it in items if it["fqn"] == "model.0.weight")
    assert [c["sizes"][0] for c in emb["chunks"]] == [14, 14, 12]  # torch.chunk split


def test_filtered_and_partial_loads_on_two_ranks(runs: Runs) -> None:
    runs.wait("chain")
    for r in range(2):
        rep = report(runs.out, "save2", r)
        assert rep["filtered_load_bad"] == [] and rep["filtered_loaded"] == 5
        assert rep["partial_load_bad"] == [] and rep["partial_untouched"] == [5.0, 5.0, 5.0]


def test_rank_killed_mid_save_leaves_no_commit(runs: Runs) -> None:
    runs.wait("chain")
    codes = runs.codes["kill"]
    assert codes[1] == -signal.SIGKILL, runs.codes.get("kill-log")
    r0 = report(runs.out, "kill", 0)
    assert r0["raised"] is True
    repo = tv.Repo.open(runs.repo)
    assert repo.branches() == r0["heads_before"]  # no "killed" branch, nothing moved
    fs = tv.fsck(repo)
    assert fs.ok, fs.problems
    assert fs.dangling > 0  # rank 1's first chunk (and rank 0's objects): gc's to reclaim
    gcr = tv.gc(repo, prune="now", reflog_expire="now")
    # with reverse deltas the killed save may already have re-encoded its parent's chunks
    # against its own new ones: gc re-encodes those back, then deletes the new chunks too
    assert gcr.deleted_objects == fs.dangling + gcr.rewritten_objects and tv.fsck(repo).ok


def test_coordinator_killed_in_finish_leaves_no_commit(runs: Runs) -> None:
    runs.wait("killfinish")
    assert runs.codes["killfinish"] == [-signal.SIGKILL]
    assert (runs.out / "kf" / "killfinish-reached").exists()
    repo = tv.Repo.open(runs.kf_repo)
    assert repo.branches() == {}
    fs = tv.fsck(repo)
    assert fs.ok and fs.dangling >= 2  # the objects and the manifest: written, unreferenced


def test_concurrent_jobs_on_two_branches(runs: Runs) -> None:
    runs.wait("conc")
    repo = tv.Repo.open(runs.conc_repo)
    assert set(repo.branches()) == {"job-0", "job-1"}
    for job, coord in ((0, 0), (1, 2)):
        commits = report(runs.out, "concurrent", coord)["commits"]
        log = repo.log(f"job-{job}")
        assert [c.id for c in log] == commits[::-1]
        assert [c.message for c in log] == [f"job {job} round {r}" for r in (2, 1, 0)]
        for rnd, cid in enumerate(commits):
            g = torch.Generator().manual_seed(1000 * job + rnd)
            w, b = torch.randn(64, 16, generator=g), torch.randn(16, generator=g)
            got = tv.dcp.load_state(repo, cid)
            assert torch.equal(got["w"], w) and torch.equal(got["b"], b) and got["round"] == rnd
    assert tv.fsck(repo).ok
    assert runs.gc_runs >= 1


@pytest.mark.skipif(not HAVE_LIGHTNING, reason="lightning is not installed")
def test_lightning_model_parallel_strategy_saves_into_the_store(runs: Runs) -> None:
    runs.wait("lightning")
    rep = json.loads((runs.out / "lit" / "lightning.json").read_text())
    assert rep["weights_only_files"] == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"]
    repo = tv.Repo.open(runs.lit_repo)
    log = repo.log("lit")
    assert len(log) == 3 and log[0].id == rep["full_pointer"]["commit"]
    keys = {it["fqn"] for it in repo.get_manifest(log[0].manifest).dcp["items"]}
    assert any(k.startswith("optimizer_0.") for k in keys)
    keys_wo = {it["fqn"] for it in repo.get_manifest(log[1].manifest).dcp["items"]}
    assert not any(k.startswith("optimizer_0.") for k in keys_wo)  # save_weights_only=True
    assert any(k.startswith("state_dict.") for k in keys_wo)
    assert rep["resume_full_weights_equal"] is True
    assert rep["resume_full_start_step"] == 2 and rep["resume_full_end_step"] == 3
    assert rep["resume_full_opt_steps"] == [2.0, 2.0, 2.0, 2.0]
    # resuming from a weights-only checkpoint works (fresh optimizer) instead of KeyError
    assert rep["resume_weights_only_start_step"] == 2
    assert rep["resume_weights_only_end_step"] == 3
    assert rep["resume_weights_only_opt_steps"] == []
    assert tv.fsck(repo).ok


def test_export_of_a_sharded_commit_loads_with_plain_dcp(runs: Runs, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    runs.wait("chain")
    repo = tv.Repo.open(runs.repo)
    out = tmp_path / "exported"
    tv.dcp.export_dcp(repo, "two", out)
    ref = load_ref(runs, "ref_two.pt")
    # DCP's own consolidation of the exported directory equals the gathered reference
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(out, tmp_path / "cons.pt")
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    flat, _ = flatten_state_dict(torch.load(tmp_path / "cons.pt", weights_only=False))
    assert_same_flat(dict(flat), ref)
    # and importing it back on top of it stores nothing new (same shards, same ids)
    repo.branch("reimported", "two")
    c = tv.dcp.import_dcp(repo, out, branch="reimported")
    assert repo.last_write_stats.new_stored_bytes == 0
    assert_same_flat(flat_consolidated(repo, c.id), ref)
    _ = dcp  # dcp.load with FileSystemReader is what dcp_to_torch_save runs
