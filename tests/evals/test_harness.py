"""The lm-evaluation-harness ``titans`` model, run by lm-eval itself on local tasks."""

import json
import subprocess
import sys

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from titans import TitansConfig, TitansLM
from titans.data.tokenizer import train_bpe
from titans.evals.harness import TitansEvalLM, load_for_eval
from titans.hf import export_model

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = ("The whale swam over the sea. Did the captain call the crew? The ship sailed west, "
        "and the crew sang. ")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_bpe([TEXT * 30], 300, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = TitansConfig.from_preset("tiny", "mac", vocab_size=tokenizer.vocab_size,
                                   hidden_size=32, segment_len=8, chunk_size=4)
    return TitansLM(cfg).double().eval()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Three local tasks over JSONL files: multiple choice, whole documents, generation."""
    folder = tmp_path_factory.mktemp("tasks")
    mc = [{"q": f"Where did ship {i} sail?", "a": "west", "b": "over the sea, and the crew sang",
           "label": i % 2} for i in range(6)]
    docs = [{"text": TEXT * k} for k in (1, 4, 9)]
    (folder / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in mc))
    (folder / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in docs))
    common = "dataset_path: json\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        f"task: local_mc\n{common}dataset_kwargs: {{data_files: {{test: {folder}/mc.jsonl}}}}\n"
        "output_type: multiple_choice\ndoc_to_text: \"Question: {{q}}\\nAnswer:\"\n"
        "doc_to_target: label\ndoc_to_choice: \"{{[a, b]}}\"\n"
        "metric_list: [{metric: acc}, {metric: acc_norm}]\n")
    (folder / "docs.yaml").write_text(
        f"task: local_docs\n{common}dataset_kwargs: {{data_files: {{test: {folder}/docs.jsonl}}}}"
        "\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list: [{metric: word_perplexity}]\n")
    return folder


def evaluate(lm, tasks):
    """lm-eval's results on the two scoring tasks (its own tasks are not indexed: seconds)."""
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=["local_mc", "local_docs"], log_samples=True,
                                   task_manager=manager)


@torch.no_grad()
def naive(model, ids):
    """log p of ids[1:] given the prefix, from one full forward."""
    logits = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(float(logits[t, tok]) for t, tok in enumerate(ids[1:]))


def test_lm_eval_scores_are_the_models_and_batching_changes_nothing(model, tokenizer, tasks):
    """Every multiple-choice log-likelihood is that of a full forward over context + choice, each
    document's that of one pass over the whole document (longer than a streamed piece), and
    batch size 1 or 8 give the same numbers (no padding reaches a memory)."""
    one = evaluate(TitansEvalLM(model=model, tokenizer=tokenizer, batch_size=1, piece_len=16),
                   tasks)
    eight = evaluate(TitansEvalLM(model=model, tokenizer=tokenizer, batch_size=8, piece_len=16),
                     tasks)
    samples = one["samples"]
    for sample in samples["local_mc"]:
        doc = sample["doc"]
        context = tokenizer.encode(f"Question: {doc['q']}\nAnswer:")
        for (lp, _), choice in zip(sample["filtered_resps"], (doc["a"], doc["b"]), strict=True):
            whole = tokenizer.encode(f"Question: {doc['q']}\nAnswer: {choice}")
            assert whole[:len(context)] == context
            assert float(lp) == pytest.approx(naive(model, whole) - naive(model, context),
                                              rel=1e-9)
    long_doc = samples["local_docs"][-1]
    ids = tokenizer.encode(long_doc["doc"]["text"])
    assert len(ids) > 100
    (logprob,) = long_doc["filtered_resps"]
    assert float(logprob) == pytest.approx(naive(model, [tokenizer.eos_id, *ids]), rel=1e-6)
    for task in ("local_mc", "local_docs"):
        for a, b in zip(samples[task], eight["samples"][task], strict=True):
            got = [r[0] if isinstance(r, (list, tuple)) else r for r in b["filtered_resps"]]
            want = [r[0] if isinstance(r, (list, tuple)) else r for r in a["filtered_resps"]]
            assert [float(x) for x in got] == pytest.approx([float(x) for x in want], rel=1e-12)
    assert one["results"]["local_mc"]["acc,none"] == eight["results"]["local_mc"]["acc,none"]


def test_generate_until_is_greedy_decoding_cut_at_the_stop_string(model, tokenizer):
    lm = TitansEvalLM(model=model, tokenizer=tokenizer, piece_len=4)  # the context in pieces
    context = "The whale swam over the sea. Did the captain"
    ids = tokenizer.encode(context)
    greedy = model.generate(torch.tensor([ids]), 12, temperature=0)[0, len(ids):].tolist()
    full = tokenizer.decode(greedy)
    stop = full[3:5]
    request = Instance("generate_until", {}, (context, {"until": [stop], "max_gen_toks": 12}), 0)
    free = Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": 12}), 1)
    assert lm.generate_until([request, free]) == [full.split(stop)[0], full]


def test_bad_arguments_are_refused(model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="either pretrained=DIR or model="):
        TitansEvalLM()
    with pytest.raises(ValueError, match="needs tokenizer="):
        TitansEvalLM(model=model)
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_for_eval(tmp_path)


@pytest.mark.slow
def test_the_lm_eval_command_runs_an_exported_model(model, tokenizer, tasks, tmp_path):
    """``python -m titans.evals.harness`` is lm-eval's command with ``titans`` registered; it
    loads an export and reports the numbers of the in-memory model."""
    export_model(model.float(), tmp_path / "m", tokenizer)
    model.double()
    out = tmp_path / "results"
    subprocess.run([sys.executable, "-m", "titans.evals.harness", "--model", "titans",
                    "--model_args", f"pretrained={tmp_path / 'm'}", "--tasks", "local_mc",
                    "--include_path", str(tasks), "--device", "cpu", "--output_path", str(out)],
                   check=True, capture_output=True)
    (result_file,) = out.rglob("results_*.json")
    acc = json.loads(result_file.read_text())["results"]["local_mc"]["acc,none"]
    lm = TitansEvalLM(model=model.float(), tokenizer=tokenizer)
    expected = evaluate(lm, tasks)["results"]["local_mc"]["acc,none"]
    model.double()
    assert acc == expected
