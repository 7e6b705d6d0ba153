"""Multi-node DCP on object storage: 4 gloo ranks that share no file system save one
checkpoint into one repository at ``s3://`` (the loopback S3 server of tests/remote), twice;
3 of them load it back resharded, this process loads it on 1, and a fresh ``tv.Repo`` and
``tvcs log`` on the URL see the commits.

Each rank gets only the URL and the endpoint (environment), a TCP rendezvous, and its own
private working/temp folder, which must hold no file when it exits: nothing is staged on
local disk.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import tensorvcs as tv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

HERE = Path(__file__).resolve().parent

# the loopback S3 server (moto) of tests/remote, and its per-test bucket, as fixtures here
sys.path.insert(0, str(HERE.parent))
_remote = importlib.import_module("remote.conftest")
s3_endpoint = _remote.s3_endpoint
s3_options = _remote.s3_options
s3_url = _remote.s3_url
WORKER = HERE / "_s3_worker.py"
WORLD = 4
TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_env(private: Path, url: str, endpoint: str) -> dict[str, str]:
    keep = (
        "PATH",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "LANG",
        "LC_ALL",
    )
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        HOME=str(private),
        TMPDIR=str(private),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(HERE.parent.parent),
        PYTHONDONTWRITEBYTECODE="1",
        TVCS_S3_URL=url,
        AWS_ENDPOINT_URL=endpoint,
    )
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _run_ranks(tmp: Path, url: str, endpoint: str) -> dict[str, Any]:
    init = f"tcp://127.0.0.1:{_free_port()}"
    procs, logs, private = [], [], []
    for r in range(WORLD):
        home = tmp / f"rank{r}-private"
        home.mkdir()
        log = tmp / f"rank{r}.log"  # the harness's side, not the rank's
        cmd = [sys.executable, str(WORKER), "--rank", str(r), "--world", str(WORLD), "--init", init]
        with open(log, "wb") as f:
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=home,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=_rank_env(home, url, endpoint),
                )
            )
        logs.append(log)
        private.append(home)
    deadline = time.monotonic() + TIMEOUT
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            codes.append(-9)
    out = "\n".join(f"--- rank {i}\n{log.read_text()[-4000:]}" for i, log in enumerate(logs))
    assert codes == [0] * WORLD, f"ranks exited {codes}\n{out}"
    # (torch makes an empty torchinductor_<user> folder in $TMPDIR when imported)
    left = {
        h.name: sorted(str(f.relative_to(h)) for f in h.rglob("*") if not f.is_dir())
        for h in private
    }
    assert left == {h.name: [] for h in private}, "a rank wrote files to its local disk"
    lines = [ln for ln in logs[0].read_text().splitlines() if ln.startswith("REPORT ")]
    assert len(lines) == 1, out
    report: dict[str, Any] = json.loads(lines[0][len("REPORT ") :])
    return report


def _flat_digests(repo: tv.Repo, rev: str) -> dict[str, str]:
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    sys.path.insert(0, str(HERE))
    from _s3_worker import digests

    flat, _ = flatten_state_dict(tv.dcp.load_state(repo, rev))
    return digests(dict(flat))


def test_four_ranks_save_to_s3_and_load_resharded(
    tmp_path: Path, s3_url: str, s3_endpoint: str, s3_options: dict[str, Any]
) -> None:
    tv.Repo.init(s3_url, chunk_size=4096, pack_threshold=1024, **s3_options).close()
    rep = _run_ranks(tmp_path, s3_url, s3_endpoint)

    # 3 ranks loaded the 4-rank checkpoint, resharded: every key bit for bit
    assert rep["load3_bad"] == []
    assert rep["load3_keys"] == len(rep["ref2"])
    assert rep["load3_shard_rows"] == [20, 64]  # 60 rows over 3 ranks (saved as 15 x 4)

    # the second save stored only what changed: far less than the checkpoint
    second = rep["second"]
    assert 0 < second["new_stored_bytes"] < second["logical_bytes"] // 10

    # a fresh Repo on the URL sees both commits, and loads each on 1 process, bit for bit
    repo = tv.Repo.open(s3_url, **s3_options)
    try:
        c1, c2 = rep["commits"]
        assert [c.id for c in repo.log("main")] == [c2, c1]
        assert [c.message for c in repo.log("main")] == [
            "4 ranks, one bias changed",
            "4 ranks, step 1",
        ]
        assert _flat_digests(repo, "main") == rep["ref2"]
        assert _flat_digests(repo, "main~1") == rep["ref1"]
        changed = sorted(k for k in rep["ref1"] if rep["ref1"][k] != rep["ref2"][k])
        assert changed == ["extra.epoch", "model.3.bias"]
    finally:
        repo.close()

    # and so does the CLI, configured from the environment only
    from click.testing import CliRunner

    from tensorvcs.cli import cli

    res = CliRunner(env={"AWS_ENDPOINT_URL": s3_endpoint}).invoke(
        cli, ["--repo", s3_url, "log", "--oneline"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(c2[:7]) and "one bias changed" in lines[0]
    assert lines[1].startswith(c1[:7]) and "step 1" in lines[1]


# -- the shared locks the ranks rely on (every rank holds the gc lock shared while writing) --
def _store(s3_url: str, s3_options: dict[str, Any]) -> Any:
    from tensorvcs.store.fsspec_store import FsspecStore

    return FsspecStore(s3_url, lock_ttl=3.0, **s3_options)


def test_s3_shared_locks_coexist_and_exclude_an_exclusive_holder(
    s3_url: str, s3_options: dict[str, Any]
) -> None:
    from tensorvcs.errors import LockTimeoutError

    a, b = _store(s3_url, s3_options), _store(s3_url, s3_options)
    with a.lock("gc", shared=True, timeout=5), b.lock("gc", shared=True, timeout=5):
        assert len(list(a.list("locks/gc.shared"))) == 2
        with pytest.raises(LockTimeoutError) as e, b.lock("gc", timeout=0.3):
            pass
        assert str(e.value) == (
            f"could not take lock {s3_url}/locks/gc (shared holders remain) within 0.3s "
            "(another tensorvcs process holds it; it expires 3s after its holder stops "
            "refreshing it)"
        )
        assert not a.exists("locks/gc")  # the failed exclusive taker let go of its object
    assert list(a.list("locks")) == []
    with a.lock("gc", timeout=5):
        with (
            pytest.raises(LockTimeoutError, match=r"locks/gc \(shared\) within 0.3s"),
            b.lock("gc", shared=True, timeout=0.3),
        ):
            pass
        assert list(a.list("locks/gc.shared")) == []  # the shared taker backed off
    with b.lock("gc", shared=True, timeout=5):  # released
        pass


def test_s3_dead_shared_holder_expires(s3_url: str, s3_options: dict[str, Any]) -> None:
    st = _store(s3_url, s3_options)
    st.put("locks/gc.shared/dead", [b'{"owner": "dead", "expires": 0}'])
    with st.lock("gc", timeout=5):
        assert not st.exists("locks/gc.shared/dead")
    assert list(st.list("locks")) == []


# -- reverse deltas on object storage: deferred to compaction -------------------------------
def test_dcp_save_to_s3_defers_the_delta_rewrite_to_compact(
    tmp_path: Path, s3_url: str, s3_options: dict[str, Any]
) -> None:
    """A save that moves every tensor would upload each changed chunk twice on object storage
    (the new chunk whole, then the previous checkpoint's chunk re-encoded as a delta against
    it): there the writer leaves the re-encoding to ``tv.compact``, which does it later with
    the same result; a local repository still re-encodes in the save."""
    import torch
    import torch.distributed.checkpoint as dcp

    from tensorvcs.format import codecs, envelope

    def chunk_codecs(repo: tv.Repo) -> list[int]:
        heads = [repo.objects.header(o) for o in repo.objects.ids()]
        return sorted(h.codec for h in heads if h.kind == envelope.KIND_CHUNK)

    g = torch.Generator().manual_seed(0)
    w1 = {"w": torch.randn(64, 256, generator=g)}  # 64 KiB: 16 chunks of 4 KiB
    w2 = {"w": w1["w"] + 1e-4 * torch.randn(64, 256, generator=g)}
    remote = tv.Repo.init(s3_url, chunk_size=4096, pack_threshold=1024, **s3_options)
    local = tv.Repo.init(tmp_path / "local", chunk_size=4096, pack_threshold=1024)
    try:
        deferred = {}
        for name, repo in (("s3", remote), ("local", local)):
            for state in (w1, w2):
                w = tv.dcp.StorageWriter(repo)
                dcp.save({"model": dict(state)}, storage_writer=w, no_dist=True)
                assert w.last_stats is not None
            deferred[name] = w.last_stats.deferred
        assert deferred == {"s3": 16, "local": 0}
        assert chunk_codecs(remote).count(codecs.CODEC_DELTA) == 0  # both versions whole
        assert chunk_codecs(local).count(codecs.CODEC_DELTA) == 16
        rep = tv.compact(remote)
        assert (rep.candidates, rep.rewritten) == (16, 16) and rep.bytes_saved > 0
        assert chunk_codecs(remote) == chunk_codecs(local)
        assert _flat_digests(remote, "main") == _flat_digests(local, "main")
        assert _flat_digests(remote, "main~1") == _flat_digests(local, "main~1")
        assert tv.fsck(remote).ok
    finally:
        remote.close()


def test_a_save_on_s3_asks_nothing_about_the_parents_objects(
    s3_url: str, s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On object storage each existence check is a HEAD request: the parent's objects are
    known to be stored (the gc lock keeps them) and any other object is written create-only,
    so a save that changes one tensor asks about none of the unchanged ones' objects."""
    import torch
    import torch.distributed.checkpoint as dcp

    g = torch.Generator().manual_seed(0)
    state = {"model": {f"l{i}": torch.randn(32, 256, generator=g) for i in range(4)}}
    repo = tv.Repo.init(s3_url, chunk_size=4096, pack_threshold=1024, **s3_options)
    try:
        dcp.save(state, storage_writer=tv.dcp.StorageWriter(repo), no_dist=True)
        first = repo.get_manifest(repo.get_commit(repo.resolve("main")).manifest).object_ids()
        asked: list[str] = []
        has = repo.objects.has
        monkeypatch.setattr(repo.objects, "has", lambda oid: asked.append(oid) or has(oid))
        state["model"]["l0"] = state["model"]["l0"] + 1.0  # 8 of its chunks change
        w = tv.dcp.StorageWriter(repo)
        dcp.save(state, storage_writer=w, no_dist=True)
        assert w.last_stats is not None and w.last_stats.new_objects == 8
        assert w.last_stats.reused_objects == 24
        assert [o for o in asked if o in first] == []
        second = repo.get_manifest(repo.get_commit(repo.resolve("main")).manifest).object_ids()
        assert len(second - first) == 8 and len(set(asked) & second) == 8  # the new ones, once
        got = tv.dcp.load_state(repo, "main")
        for k, v in state["model"].items():
            assert torch.equal(got["model"][k], v), k
    finally:
        repo.close()


def test_which_stores_count_as_object_storage(tmp_path: Path, s3_url: str,
                                              s3_options: dict[str, Any]) -> None:
    from tensorvcs.store.fsspec_store import FsspecStore
    from tensorvcs.store.local import LocalStore

    assert LocalStore(tmp_path).local
    assert FsspecStore(f"file://{tmp_path}/f").local
    assert FsspecStore("memory://tvcs-which").local
    assert not FsspecStore(s3_url, **s3_options).local
    repo = tv.Repo.init(f"file://{tmp_path}/repo")
    assert tv.dcp.StorageWriter(repo).defer_deltas is False
    assert repo.tensor_writer(None).known_ids is None
    remote = tv.Repo.init(s3_url, **s3_options)
    try:
        assert tv.dcp.StorageWriter(remote).defer_deltas is True
        assert tv.dcp.StorageWriter(remote, defer_deltas=False).defer_deltas is False
        assert remote.tensor_writer(None).known_ids == set()
    finally:
        remote.close()
