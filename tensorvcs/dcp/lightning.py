"""Lightning strategies whose sharded checkpoints go into a tensorvcs repository.

Lightning's FSDP and model-parallel strategies bypass ``CheckpointIO``: for a sharded save
they call ``dcp.save(state, checkpoint_id=dir)`` themselves. These subclasses make the same
save with ``tv.dcp.StorageWriter`` instead — one commit per checkpoint, shards deduplicated
and delta-encoded against the previous checkpoint — and leave at the checkpoint's path a small
JSON *pointer file* naming the commit, so ``ModelCheckpoint``'s bookkeeping and
``trainer.fit(ckpt_path=...)`` work unchanged::

    from tensorvcs.dcp.lightning import TVCSFSDPStrategy, TVCSModelParallelStrategy

    strategy = TVCSFSDPStrategy("run", branch="main", state_dict_type="sharded", ...)
    trainer = L.Trainer(strategy=strategy, callbacks=[ModelCheckpoint(save_weights_only=True)])
    trainer.fit(model, ckpt_path="checkpoints/last.ckpt")   # a pointer file: resumes from
                                                            # its commit, on any world size

The DCP state of a commit is ``{"model" | "state_dict": <sharded model state>,
"optimizer_<i>": <sharded optimizer state>, "lightning": <the rest of Lightning's checkpoint:
epoch, global_step, loops, callbacks, schedulers, hparams>}``. A weights-only checkpoint
(``save_weights_only=True``) has no ``optimizer_<i>`` keys and no scheduler states; resuming
``fit`` from one loads the weights and keeps the optimizers and schedulers as they are (fresh),
with a warning, where Lightning raises ``KeyError: 'lr_schedulers'`` / ``'optimizer_states'``.

``lightning`` is used when installed, else ``pytorch_lightning``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp

from ..errors import UsageError
from ..integrations.pointer import read_pointer, write_pointer
from ..repo import Repo
from .convert import load_state
from .reader import StorageReader
from .writer import StorageWriter, as_repo

try:
    import lightning.pytorch as _pl
except ImportError:  # pragma: no cover - only pytorch_lightning installed
    import pytorch_lightning as _pl  # type: ignore[no-redef]

TrainerFn = _pl.trainer.states.TrainerFn
rank_zero_warn = _pl.utilities.rank_zero.rank_zero_warn

META_KEY = "lightning"
POINTER_KIND = "tensorvcs-dcp-checkpoint"


def read_dcp_pointer(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The pointer file these strategies write at a checkpoint path, or None."""
    return read_pointer(path, POINTER_KIND, "commit")


def _write_pointer(path: Path, repo: Repo, commit: str, branch: str | None) -> None:
    write_pointer(path, POINTER_KIND, repo=str(repo.root), commit=commit, branch=branch)


class _StoreShardedCheckpoints:
    """Save/load overrides shared by the two strategies (a mixin placed before them)."""

    _tvcs_model_key = "model"

    def _tvcs_setup(self, repo: Repo | str | os.PathLike[str], branch: str | None) -> None:
        self._tvcs_repo_arg = repo
        self._tvcs_branch = branch
        self._tvcs_repo_obj: Repo | None = repo if isinstance(repo, Repo) else None
        self.last_commit: str | None = None

    @property
    def tvcs_repo(self) -> Repo:
        if self._tvcs_repo_obj is None:
            self._tvcs_repo_obj = as_repo(self._tvcs_repo_arg)
        return self._tvcs_repo_obj

    def _tvcs_sharded(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        if not self._tvcs_sharded():
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # type: ignore[misc]
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        path = Path(self.broadcast(filepath))  # type: ignore[attr-defined]
        state: dict[str, Any] = {self._tvcs_model_key: checkpoint.pop("state_dict")}
        for idx, optim_state in enumerate(checkpoint.pop("optimizer_states", [])):
            state[f"optimizer_{idx}"] = optim_state
        state[META_KEY] = checkpoint
        step = checkpoint.get("global_step")
        writer = StorageWriter(
            self.tvcs_repo,
            branch=self._tvcs_branch,
            message=f"lightning checkpoint {path.name}",
            step=step if type(step) is int else None,
            metadata={"lightning_checkpoint": path.name},
        )
        dcp.save(state, storage_writer=writer)
        if writer.is_coordinator:
            assert writer.last_commit is not None
            self.last_commit = writer.last_commit.id
            _write_pointer(path, self.tvcs_repo, writer.last_commit.id, self._tvcs_branch)
        self.barrier("tensorvcs-dcp-save")  # type: ignore[attr-defined]

    def remove_checkpoint(self, filepath: Any) -> None:
        """Removes the pointer file only; the commit stays in the branch's history (use
        ``Repo.drop`` and ``Repo.gc`` for retention)."""
        if read_dcp_pointer(filepath) is not None:
            if self.is_global_zero:  # type: ignore[attr-defined]
                Path(filepath).unlink(missing_ok=True)
            return
        super().remove_checkpoint(filepath)  # type: ignore[misc]

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        ptr = read_dcp_pointer(checkpoint_path)
        if ptr is None:
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)  # type: ignore[misc]
        commit = self.broadcast(ptr["commit"])  # type: ignore[attr-defined]
        repo = self.tvcs_repo
        keys = set(StorageReader(repo, commit).read_metadata().state_dict_metadata)
        fitting = self.lightning_module.trainer.state.fn == TrainerFn.FITTING  # type: ignore[attr-defined]
        optimizers = list(self.optimizers) if fitting else []  # type: ignore[attr-defined]
        present = [
            i for i in range(len(optimizers)) if any(k.startswith(f"optimizer_{i}.") for k in keys)
        ]
        self._tvcs_load_states(repo, commit, optimizers, present)
        meta = load_state(repo, commit, keys=[META_KEY], weights_only=weights_only is not False)
        checkpoint = dict(meta.get(META_KEY, {}))
        if fitting and len(present) < len(optimizers):
            rank_zero_warn(
                f"{checkpoint_path} is a weights-only checkpoint (commit {commit[:12]}): the "
                "weights are restored; optimizer and scheduler states start fresh."
            )
            trainer = self.lightning_module.trainer  # type: ignore[attr-defined]
            checkpoint.setdefault(
                "lr_schedulers", [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
            )
        return checkpoint

    def _tvcs_load_states(
        self, repo: Repo, commit: str, optimizers: list[Any], present: list[int]
    ) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class TVCSModelParallelStrategy(_StoreShardedCheckpoints, _pl.strategies.ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2 / tensor parallel, DTensor) with
    ``save_distributed_checkpoint=True`` checkpoints stored as tensorvcs commits."""

    _tvcs_model_key = "state_dict"

    def __init__(
        self, repo: Repo | str | os.PathLike[str], *args: Any, branch: str | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._tvcs_setup(repo, branch)

    def _tvcs_sharded(self) -> bool:
        return bool(self._save_distributed_checkpoint)

    def _tvcs_load_states(
        self, repo: Repo, commit: str, optimizers: list[Any], present: list[int]
    ) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        module, lm = self.model, self.lightning_module
        if module is None or lm is None:
            raise UsageError("the model is not set up yet")
        key = self._tvcs_model_key
        module_state = {key: get_model_state_dict(module)}
        dcp.load(module_state, storage_reader=StorageReader(repo, commit))
        module.load_state_dict(module_state[key], strict=lm.strict_loading)
        for idx in present:
            optim = optimizers[idx]
            okey = f"optimizer_{idx}"
            optim_state = {okey: get_optimizer_state_dict(module, optim)}
            dcp.load(optim_state, storage_reader=StorageReader(repo, commit))
            set_optimizer_state_dict(
                module,
                optim,
                optim_state_dict=optim_state[okey],
                options=StateDictOptions(cpu_offload=True),
            )


class TVCSFSDPStrategy(_StoreShardedCheckpoints, _pl.strategies.FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with ``state_dict_type="sharded"`` checkpoints stored as
    tensorvcs commits (``state_dict_type="full"`` saves go to files, as usual).

    Lightning's FSDP (FSDP1) needs a GPU; a subclass is not refused on CPU by the Trainer, but
    torch's FSDP1 then is. The save path is the same code as ``TVCSModelParallelStrategy``'s
    (tested on CPU); the load path mirrors Lightning's own FSDP sharded load."""

    def __init__(
        self, repo: Repo | str | os.PathLike[str], *args: Any, branch: str | None = None, **kw: Any
    ) -> None:
        kw.setdefault("state_dict_type", "sharded")
        super().__init__(*args, **kw)
        self._tvcs_setup(repo, branch)

    def _tvcs_sharded(self) -> bool:
        return self._state_dict_type == "sharded"

    def _tvcs_load_states(
        self, repo: Repo, commit: str, optimizers: list[Any], present: list[int]
    ) -> None:
        from torch.distributed.checkpoint.optimizer import load_sharded_optimizer_state_dict
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        _get_sharded_state_dict_context = _pl.strategies.fsdp._get_sharded_state_dict_context
        lm = self.lightning_module
        if self.model is None or lm is None:
            raise UsageError("the FSDP model is not set up yet")
        with _get_sharded_state_dict_context(self.model):  # type: ignore[attr-defined]
            module_state = {"model": self.model.state_dict()}
            dcp.load(module_state, storage_reader=StorageReader(repo, commit))
            self.model.load_state_dict(module_state["model"], strict=lm.strict_loading)
            for idx in present:
                optim = optimizers[idx]
                okey = f"optimizer_{idx}"
                optim_state = load_sharded_optimizer_state_dict(
                    model_state_dict=module_state["model"],
                    optimizer_key=okey,
                    storage_reader=StorageReader(repo, commit),
                )
                flat = FSDP.optim_state_dict_to_load(
                    optim_state_dict=optim_state[okey], model=self.model, optim=optim
                )
                optim.load_state_dict(flat)
