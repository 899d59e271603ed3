"""Fixtures shared by test modules."""

import csv
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# The ETT files the issue provides next to the repository (never committed; CC BY-ND 4.0), or
# where TITANS_ETT_DIR says.
ETT_DIR = Path(os.environ.get("TITANS_ETT_DIR")
               or Path(__file__).resolve().parents[2] / "shared" / "data" / "ett")

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


@pytest.fixture
def etth1() -> Path:
    """The real ETTh1.csv (the test is skipped where it is not present)."""
    path = ETT_DIR / "ETTh1.csv"
    if not path.is_file():
        pytest.skip(f"{path} is not present (set TITANS_ETT_DIR to the folder holding it)")
    return path


@pytest.fixture
def ett_rows(etth1: Path) -> Callable[[int], list[list[str]]]:
    """``ett_rows(count)``: the header and the first ``count`` rows of the real ETTh1 file."""

    def rows(count: int) -> list[list[str]]:
        with open(etth1, newline="") as f:
            reader = csv.reader(f)
            return [next(reader) for _ in range(count + 1)]

    return rows


@pytest.fixture
def ett_slice(tmp_path: Path, ett_rows: Callable[[int], list[list[str]]]) -> Path:
    """A 1000-row real slice of ETTh1, under a name that takes the 70/10/20 split."""
    path = tmp_path / "slice.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(ett_rows(1000))
    return path
