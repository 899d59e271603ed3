"""A trained model as a Hugging Face directory (``titans export``), and back.

The directory holds ``config.json`` (:class:`TitansHFConfig`), ``model.safetensors``,
``generation_config.json`` and, for the library's ``tokenizers`` tokenizers (byte-level BPE,
``tokenizer.json`` files), ``tokenizer.json`` + ``tokenizer_config.json`` so that
``AutoTokenizer`` loads it. It is written into a staging directory next to ``out`` and renamed
into place when complete: an interrupted export leaves no half directory.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import tokenizers
import torch

from titans import runs
from titans.data.pipeline import load_corpus
from titans.data.tokenizer import Tokenizer
from titans.hf.configuration_titans import TitansHFConfig
from titans.hf.modeling_titans import TitansForCausalLM
from titans.models.lm import TitansLM

TOKENIZER_FILE = "tokenizer.json"


def wrap(model: TitansLM, eos_token_id: int | None = None) -> TitansForCausalLM:
    """``model`` (its weights shared, not copied) inside a :class:`TitansForCausalLM`."""
    config = TitansHFConfig.from_titans(model.config, eos_token_id=eos_token_id,
                                        architectures=["TitansForCausalLM"])
    with torch.device("meta"):  # the wrapper's own TitansLM is replaced: do not allocate it
        hf_model = TitansForCausalLM(config)
    hf_model.model = model
    return hf_model


def export_model(model: TitansLM, out: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``, if given) as a Hugging Face directory ``out``, which
    must not exist yet; returns ``out``."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: export into a new directory")
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size}: they do not belong together")
    tokenizer_json = None if tokenizer is None else tokenizer.to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        hf_model = wrap(model, None if tokenizer is None else tokenizer.eos_id)
        hf_model.save_pretrained(staging)
        if tokenizer_json is not None:
            (staging / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
            eos = hf_model.config.eos_token_id
            # Looked up in the tokenizer itself: an end-of-text token need not be "added".
            eos_text = tokenizers.Tokenizer.from_str(tokenizer_json).id_to_token(eos)
            (staging / "tokenizer_config.json").write_text(json.dumps({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": eos_text, "pad_token": eos_text,
                "model_max_length": 2**62,  # no limit: the state is carried, not a window
                "clean_up_tokenization_spaces": False,
            }, indent=2), encoding="utf-8")
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def export_run(run: str | Path, out: str | Path) -> Path:
    """Export the model of a training run with its tokenizer (``titans export``)."""
    model, _ = runs.load_checkpoint(run)
    _, tokenizer = load_corpus(runs.read_data_config(run))
    return export_model(model, out, tokenizer)


def load_pretrained(path: str | Path) -> tuple[TitansLM, Tokenizer | None]:
    """The :class:`TitansLM` (eval mode) and tokenizer (None if there is none) of an exported
    directory."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not an exported Titans model "
                                "(make one with titans export --run RUN --out DIR)")
    model = TitansForCausalLM.from_pretrained(path).model.eval()
    tokenizer_file = path / TOKENIZER_FILE
    tokenizer = Tokenizer.from_file(tokenizer_file) if tokenizer_file.is_file() else None
    return model, tokenizer
