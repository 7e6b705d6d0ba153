"""Lightning run with TVCSModelParallelStrategy on CPU (2 processes; Lightning starts rank 1
by running this script again). Run by tests/dcp/test_dcp_dist.py:

    python _lightning_worker.py REPO OUT

1. fit 2 steps with ModelCheckpoint(every_n_train_steps=1, save_weights_only=True): two
   weights-only commits, pointer files in OUT/ckpt;
2. trainer.save_checkpoint(OUT/full.ckpt): a full commit (optimizer states included);
3. a new Trainer resumes from the full pointer, checks the restored weights and step, trains to 3;
4. another resumes from a weights-only pointer (Lightning alone raises KeyError there).
Rank 0 writes OUT/lightning.json.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from tensorvcs.dcp.lightning import TVCSModelParallelStrategy  # noqa: E402


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
        self.seen: dict[str, Any] = {}

    def configure_model(self) -> None:
        for layer in self.net:
            fully_shard(layer, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch: Any, idx: int) -> torch.Tensor:
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def on_train_start(self) -> None:
        full = {k: v.full_tensor().clone() for k, v in self.net.state_dict().items()}
        self.seen["start_weights"] = full
        self.seen["start_step"] = self.trainer.global_step
        opt = self.trainer.optimizers[0]
        self.seen["opt_state_steps"] = sorted(
            float(s["step"]) for s in opt.state.values() if "step" in s
        )


def data() -> Any:
    g = torch.Generator().manual_seed(1)
    ds = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=4)


def trainer(repo: str, max_steps: int, callbacks: list[Any]) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=TVCSModelParallelStrategy(repo, branch="lit"),
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=callbacks,
    )


def main() -> int:
    repo, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    ck = ModelCheckpoint(
        dirpath=out / "ckpt", every_n_train_steps=1, save_weights_only=True, save_top_k=-1
    )
    t1 = trainer(repo, 2, [ck])
    m1 = Model()
    t1.fit(m1, data())
    weights_only = sorted(p.name for p in (out / "ckpt").iterdir())
    t1.save_checkpoint(out / "full.ckpt")
    saved = {k: v.full_tensor().clone() for k, v in m1.net.state_dict().items()}

    t2 = trainer(repo, 3, [])
    m2 = Model()
    t2.fit(m2, data(), ckpt_path=out / "full.ckpt")
    restored = all(torch.equal(saved[k], m2.seen["start_weights"][k]) for k in saved)

    t3 = trainer(repo, 3, [])
    m3 = Model()
    t3.fit(m3, data(), ckpt_path=out / "ckpt" / weights_only[-1])
    if t1.global_rank == 0:
        report = {
            "weights_only_files": weights_only,
            "full_pointer": json.loads((out / "full.ckpt").read_text()),
            "resume_full_weights_equal": restored,
            "resume_full_start_step": m2.seen["start_step"],
            "resume_full_opt_steps": m2.seen["opt_state_steps"],
            "resume_full_end_step": t2.global_step,
            "resume_weights_only_start_step": m3.seen["start_step"],
            "resume_weights_only_end_step": t3.global_step,
            "resume_weights_only_opt_steps": m3.seen["opt_state_steps"],
        }
        (out / "lightning.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
