"""Step 3: a repository directly on object storage (Repo.open/init with a URL), and partial
clone / fetch by include glob."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_same_value

import tensorvcs as tv
from tensorvcs.errors import ObjectNotFoundError, RepoNotFoundError
from tensorvcs.format import codecs


def test_repo_on_s3_commit_checkout(
    tmp_path: Path, s3_url: str, s3_options: dict[str, Any]
) -> None:
    with pytest.raises(RepoNotFoundError):
        tv.Repo.open(s3_url, **s3_options)
    r = tv.Repo.init(s3_url, chunk_size=4096, pack_threshold=1024, **s3_options)
    g = torch.Generator().manual_seed(0)
    s1 = {"w": torch.randn(64, 64, generator=g), "b": torch.randn(8, generator=g), "step": 1}
    c1 = r.commit(s1, message="on s3")
    s2 = {**s1, "w": s1["w"] + 1e-3, "step": 2}
    c2 = r.commit(s2, message="again")
    r.close()

    r2 = tv.Repo.open(s3_url, **s3_options)
    assert r2.resolve("main") == c2.id
    assert [c.id for c in r2.log()] == [c2.id, c1.id]
    assert_same_value(r2.checkout("main"), s2)
    assert_same_value(r2.checkout(c1.id), s1)
    assert tv.fsck(r2).ok
    r2.close()

    local = tv.clone(s3_url, tmp_path / "local", **s3_options)
    assert_same_value(local.checkout(), s2)
    local.close()


def test_partial_clone_of_adapter(tmp_path: Path, s3_url: str, s3_options: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(1)
    base = {f"layer{i}": torch.randn(256, 256, generator=g) for i in range(8)}  # 2 MiB
    adapter = {
        f"layer{i}": {"A": torch.randn(4, 256, generator=g), "B": torch.zeros(256, 4)}
        for i in range(8)
    }
    a = tv.Repo.init(tmp_path / "a", chunk_size=64 << 10, pack_threshold=4096)
    a.commit({"base": base, "adapter": adapter}, message="base + adapter")
    adapter2 = {k: {"A": v["A"], "B": v["B"] + 0.01} for k, v in adapter.items()}
    a.commit({"base": base, "adapter": adapter2}, message="adapter step")
    tv.remote_add(a, "origin", s3_url, **s3_options)
    tv.push(a)

    base_bytes = sum(t.numel() * t.element_size() for t in base.values())
    from tensorvcs import remote as rm

    b, res = rm.clone(s3_url, tmp_path / "b", filter=["adapter"], **s3_options)
    assert res.bytes_sent < 0.05 * base_bytes, (res.bytes_sent, base_bytes)
    assert_same_value(b.checkout("main", include="adapter"), {"adapter": adapter2})
    assert_same_value(b.checkout("main~1", include="adapter/*"), {"adapter": adapter})
    with pytest.raises(ObjectNotFoundError):
        b.checkout("main", include="base/layer0")

    # later fetches keep the filter
    adapter3 = {k: {"A": v["A"] * 2, "B": v["B"]} for k, v in adapter2.items()}
    a.commit({"base": base, "adapter": adapter3}, message="adapter step 2")
    tv.push(a)
    res = tv.pull(b)
    assert res.bytes_sent < 0.05 * base_bytes
    assert_same_value(b.checkout("main", include="adapter"), {"adapter": adapter3})

    # the partial clone commits a new adapter over the same base (whose objects it never
    # fetched) and pushes it back: the origin has the base, so only the new objects travel
    adapter4 = {k: {"A": v["A"], "B": v["B"] - 0.5} for k, v in adapter3.items()}
    b.commit({"base": base, "adapter": adapter4}, message="from the partial clone")
    res = tv.push(b)
    assert 0 < res.bytes_sent < 0.05 * base_bytes
    tv.pull(a)
    assert_same_value(a.checkout("main"), {"base": base, "adapter": adapter4})
    assert tv.fsck(a).ok
    a.close()
    b.close()


def test_repo_does_not_import_remote() -> None:
    """Layers only call downwards: tensorvcs.repo (and a plain `import tensorvcs`) never load
    tensorvcs.remote; Repo.open/init with a URL use the store layer (tensorvcs.store.open)."""
    code = (
        "import sys, tensorvcs.repo, tensorvcs as tv\n"
        "assert 'tensorvcs.remote' not in sys.modules, 'tensorvcs.repo imported tensorvcs.remote'\n"
        "assert 'tensorvcs.store.open' in sys.modules\n"
        "assert not hasattr(tv.Repo, 'push') and not hasattr(tv.Repo, 'clone')\n"
        "tv.push\n"  # the module-level functions load it on first use
        "assert 'tensorvcs.remote' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_checkpoint_manager_on_s3_re_encodes_in_the_background(
    s3_url: str, s3_options: dict[str, Any]
) -> None:
    """The defaults (deferred deltas done after each commit, in the background) on object
    storage: the same objects as re-encoding in the commit, every save bit for bit."""
    g = torch.Generator().manual_seed(9)
    w = torch.randn(64, 256, generator=g)
    series = []
    for i in range(3):
        w = w + 1e-4 * torch.randn(w.shape, generator=g)
        series.append({"w": w.clone(), "i": i})
    repo = tv.Repo.init(s3_url, chunk_size=4096, pack_threshold=1024, **s3_options)
    mgr = tv.CheckpointManager(repo, save_rng=False)
    ids = []
    for i, s in enumerate(series):
        ids.append(mgr.save(s, step=i + 1).result().id)
        mgr.wait(compaction=True)
        assert mgr.deferred == 0
    delta_ids = [
        o for o in repo.objects.ids() if repo.objects.header(o).codec == codecs.CODEC_DELTA
    ]
    assert len(delta_ids) == 2 * 16  # the 16 chunks of each of the two older checkpoints
    for oid, s in zip(ids, series, strict=True):
        got = repo.checkout(oid)
        assert got["w"].view(torch.uint8).equal(s["w"].view(torch.uint8)) and got["i"] == s["i"]
    assert tv.fsck(repo).ok
    mgr.close()
    repo.close()
