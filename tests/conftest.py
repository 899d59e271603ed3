"""Fixtures shared by test modules."""

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

WORDS = ["the", "people", "of", "our", "nation", "congress", "shall", "act", "upon", "law", "and",
         "war", "peace", "trade", "states", "union", "freedom", "whale", "sea", "ship", "captain"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the test machine is shared. Modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of 12 small English-like documents, and an empty cache for this test."""
    monkeypatch.setenv("TITANS_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        text = ". ".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60))
        (folder / f"doc{i:02d}.txt").write_text(text + ".\n")
    return folder


@pytest.fixture
def write_config(tmp_path: Path, docs: Path) -> Callable[..., Path]:
    """``write_config(**train)``: the path of a run config (a tiny MAC on ``docs``, a few steps)
    with these train fields changed."""

    def write(**train: object) -> Path:
        train = {"seq_len": 32, "batch_size": 2, "max_steps": 6, "warmup_steps": 2,
                 "eval_every": 3, "eval_batches": 1, "save_every": 3, "log_every": 1,
                 "progress": False, **train}
        lines = ["model:", "  preset: tiny", "  variant: mac", "  hidden_size: 32",
                 "  segment_len: 16", "data:", f"  source: {docs}", "  tokenizer: bpe:300",
                 "train:", *(f"  {k}: {str(v).lower() if isinstance(v, bool) else v}"
                             for k, v in train.items())]
        path = tmp_path / "run.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    return write
