"""The ``titans`` model of lm-evaluation-harness (needs ``lm-eval``: the ``eval`` extra).

Importing this module registers :class:`TitansEvalLM` under the name ``titans``. lm-eval's own
command has no plugin mechanism for models, so ``python -m titans.evals.harness`` is that command
with ``titans`` registered (every argument is lm-eval's)::

    python -m titans.evals.harness --model titans --model_args pretrained=DIR --tasks piqa

``DIR`` is an exported Hugging Face directory (``titans export``) or a training run. In Python,
``lm_eval.simple_evaluate(model=TitansEvalLM(model=..., tokenizer=...), tasks=[...])``.

Scoring is exact and recurrent (:mod:`titans.evals.scoring`): a document of any length streams
through the carried state (``loglikelihood_rolling``), and a batch holds continuations of one
context with equal lengths, so no padding is ever written into a memory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from titans import runs
from titans.checks import check_int
from titans.data.pipeline import load_corpus
from titans.distributed import resolve_device
from titans.evals.generation import TextTokenizer
from titans.evals.scoring import continuation_logprobs, document_logprob, encode_pair
from titans.models.lm import TitansLM, sample_next_token
from titans.models.streaming import stream

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256


def load_for_eval(path: str | Path) -> tuple[TitansLM, TextTokenizer]:
    """The model and tokenizer of an exported directory or a training run."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: pass an exported directory "
                                "(titans export) or a training run")
    if "model_type" in json.loads(config_file.read_text(encoding="utf-8")):
        from titans.hf import load_pretrained

        model, tokenizer = load_pretrained(path)
        if tokenizer is None:
            raise ValueError(f"{path} has no tokenizer.json: export the run with its tokenizer")
        return model, tokenizer
    model, _ = runs.load_checkpoint(path)
    return model, load_corpus(runs.read_data_config(path))[1]


@register_model("titans")
class TitansEvalLM(LM):
    """A Titans model for lm-eval: ``pretrained`` (a directory, see :func:`load_for_eval`) or an
    in-memory ``model`` with its ``tokenizer``.

    batch_size: continuations scored side by side ("auto" or None: 16); device: "auto", "cpu",
    "cuda", ...; piece_len: tokens per call when reading long contexts and documents (memory
    only, not results); max_gen_toks: default generation budget of ``generate_until``;
    max_length: accepted and ignored (some lm-eval tasks' instructions pass it): no context is
    cut, the state carries any length.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: TitansLM | None = None,
        tokenizer: TextTokenizer | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,
        piece_len: int = 2048,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        del max_length  # lm-eval's RULER docs pass it; the carried state reads any length
        if (pretrained is None) == (model is None):
            raise ValueError("pass either pretrained=DIR or model= (with tokenizer=)")
        if pretrained is not None:
            model, tokenizer = load_for_eval(pretrained)
        if tokenizer is None:
            raise ValueError("model= needs tokenizer=")
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = DEFAULT_BATCH_SIZE
        self.batch_size = int(batch_size)
        check_int("batch_size", self.batch_size, 1)
        check_int("piece_len", piece_len, 1)
        check_int("max_gen_toks", max_gen_toks, 1)
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command passes cuda:0 unless told otherwise, as its default.
            logger.warning("device %s is not available: running on the CPU", device)
            device = "cpu"
        self.model = model.to(resolve_device(device or "auto")).eval()
        self.tokenizer = tokenizer
        self.piece_len = piece_len
        self.max_gen_toks = max_gen_toks

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy) per request (args: context, continuation)."""
        pairs = [encode_pair(self.tokenizer.encode, *req.args, self.tokenizer.eos_id)
                 for req in requests]
        results = continuation_logprobs(self.model, pairs, self.batch_size, self.piece_len)
        for req, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """log p(document) per request (args: text,), streamed with carried state."""
        results = []
        for req in requests:
            ids = self.tokenizer.encode(req.args[0])
            results.append(document_logprob(self.model, ids, self.tokenizer.eos_id,
                                            self.piece_len))
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, results[-1])
        return results

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Continue each context (args: context, gen_kwargs) until a stop string of
        ``until``, end-of-text or ``max_gen_toks`` tokens; greedy unless ``do_sample``."""
        device = next(self.model.parameters()).device
        outputs = []
        for req in requests:
            context, gen_kwargs = req.args
            kwargs: dict[str, Any] = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop(
                "do_sample", False) else 0.0
            ids = self.tokenizer.encode(context) or [self.tokenizer.eos_id]
            # A long context (RULER, babilong) is read in pieces with carried state.
            *_, out = stream(self.model, torch.tensor(ids, device=device), self.piece_len,
                             losses=False, logits=True, logits_to_keep=1)
            new: list[int] = []
            text = ""
            for _ in range(max_new):
                nxt = sample_next_token(out.logits[:, -1], temperature)
                if int(nxt) == self.tokenizer.eos_id:
                    break
                new.append(int(nxt))
                text = self.tokenizer.decode(new)
                if any(stop in text for stop in until):
                    break
                out = self.model(nxt[:, None], out.state, logits_to_keep=1)
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return outputs


def main() -> None:
    """lm-eval's command line with the ``titans`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
