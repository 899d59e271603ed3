"""Where the records of a training run go while it trains: the run's ``metrics.jsonl``
(:class:`titans.runs.MetricsLog`), TensorBoard and Weights & Biases when enabled, and the progress
on the console: a bar on a terminal, otherwise (a log file, CI) one plain line per record.

Only rank 0 reports; on the other processes a :class:`TrainingLog` does nothing. The records are
described in :mod:`titans.train`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from titans import runs
from titans.models.config import TitansConfig
from titans.models.health import LR_KEY, MOMENTUM_KEY, WEIGHT_NORM_KEY
from titans.runtime import RuntimeConfig

if TYPE_CHECKING:
    from titans.train import TrainConfig

# How the memory's health shows in the progress bar and the plain progress line.
_HEALTH_LABELS = {WEIGHT_NORM_KEY: "|W|", LR_KEY: "theta", MOMENTUM_KEY: "mom"}


def check_trackers_installed(cfg: TrainConfig) -> None:
    """Raise a clear ImportError for an enabled tracker whose package is missing; to be checked
    on every process, so none is left waiting for a rank 0 that failed."""
    for enabled, module, extra in ((cfg.tensorboard, "tensorboard", "tensorboard"),
                                   (cfg.wandb, "wandb", "wandb")):
        if enabled and importlib.util.find_spec(module) is None:
            raise ImportError(
                f"{extra}=True needs the {module} package: pip install 'titans-lm[{extra}]'"
            )


class TrainingLog:
    """The records of one training session, from step ``start_step`` (the checkpoint it resumed
    from, or 0) to ``num_steps``. ``enabled``: this process reports (rank 0)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model_config: TitansConfig,
        runtime: RuntimeConfig,
        start_step: int,
        num_steps: int,
        enabled: bool,
    ) -> None:
        self.num_steps = num_steps
        out_dir = Path(cfg.out_dir)
        self.metrics = runs.MetricsLog(out_dir, keep_until=start_step) if enabled else None
        self.trackers = _Trackers(cfg, model_config, runtime, start_step) if enabled else None
        self.bar = tqdm(
            total=num_steps, initial=start_step, unit="step", dynamic_ncols=True,
            disable=not (cfg.progress and enabled and sys.stderr.isatty()),
        )
        # No terminal (a log file, CI): one plain line per record instead of the bar.
        self.plain = self.bar.disable and cfg.progress and enabled

    def train_record(self, record: dict[str, Any], eta: float) -> None:
        """A training step's record; ``eta``: the seconds this session still needs."""
        shown = {label: f"{record[key]:.3g}" for key, label in _HEALTH_LABELS.items()
                 if key in record}
        self.bar.set_postfix({"loss": f"{record['loss']:.4f}", **shown,
                              "tok_s": f"{record['tokens_per_s']:.0f}"},
                             refresh=False)  # shown by the bar's next update
        if self.plain:
            memory = "".join(f"{k} {v}  " for k, v in shown.items())
            print(f"step {record['step']}/{self.num_steps}  loss {record['loss']:.4f}  {memory}"
                  f"{record['tokens_per_s']:.0f} tok/s  eta {eta / 60:.1f} min", flush=True)
        self._write(record)

    def eval_record(self, record: dict[str, Any]) -> None:
        """An evaluation's record (``val_loss``)."""
        self._write(record)
        if self.plain:
            print(f"step {record['step']}/{self.num_steps}  validation loss "
                  f"{record['val_loss']:.4f}", flush=True)

    def step_done(self) -> None:
        """Advance the progress bar by one optimizer step."""
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.trackers is not None:
            self.trackers.close()

    def _write(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)
        if self.trackers is not None:
            self.trackers.log(record)


class _Trackers:
    """Optional TensorBoard / Weights & Biases logging, imported only when enabled."""

    def __init__(self, cfg: TrainConfig, model_config: TitansConfig, runtime: RuntimeConfig,
                 start_step: int) -> None:
        self.tensorboard: Any = None
        self.wandb: Any = None
        out_dir = Path(cfg.out_dir)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a resumed run is about to log again.
            self.tensorboard = SummaryWriter(
                str(out_dir / runs.TENSORBOARD_DIR),
                purge_step=start_step + 1 if start_step else None,
            )
        if cfg.wandb:
            import wandb

            # A resumed run starts a new W&B run; its steps continue from the checkpoint.
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "titans-lm"), name=out_dir.name,
                dir=str(out_dir), config={"model": model_config.to_dict(), "train": asdict(cfg),
                                          "runtime": asdict(runtime)},
            )

    def log(self, record: dict[str, Any]) -> None:
        values = {k: v for k, v in record.items() if k != "step"}
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(values, step=record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
