"""Run ``titans.train.train`` from a JSON spec, in a process of its own (or under torchrun).

Used by ``tests/test_train.py`` for the kill-and-resume and data-parallel tests. Spec keys:
``model`` (TitansConfig fields), ``train`` (TrainConfig fields), ``train_tokens`` /
``val_tokens`` (.npy paths; val may be null), ``resume`` (bool), ``step_delay`` (seconds slept
before each batch, so a test can kill the run mid-way) and ``summary`` (where rank 0 writes the
returned summary as JSON).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import titans.data.batches
import titans.train
from titans import TitansConfig
from titans.io import atomic_save_json


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    # One thread: bitwise-reproducible CPU kernels, and no oversubscription of the test machine.
    torch.set_num_threads(1)
    delay = spec.get("step_delay", 0.0)
    if delay:
        get_batch = titans.data.batches.get_batch

        def slow_get_batch(*args: Any, **kwargs: Any) -> torch.Tensor:
            time.sleep(delay)
            return get_batch(*args, **kwargs)

        # The token source looks the name up at every batch.
        titans.data.batches.get_batch = slow_get_batch
    summary = titans.train.train(
        TitansConfig.from_dict(spec["model"]),
        titans.train.TrainConfig(**spec["train"]),
        np.load(spec["train_tokens"]),
        np.load(spec["val_tokens"]) if spec.get("val_tokens") else None,
        resume=spec.get("resume", False),
    )
    if int(os.environ.get("RANK", "0")) == 0:  # set by torchrun; only rank 0 writes
        atomic_save_json(summary, spec["summary"])


if __name__ == "__main__":
    main(sys.argv[1])
