"""The transformers integration: config, save/load round trip, generate equal to
TitansLM.generate for every variant, beam search, the refused cases, and titans export."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from titans import TitansConfig, TitansLM
from titans.data.tokenizer import train_bpe
from titans.hf import TitansCache, TitansForCausalLM, TitansHFConfig, export_model, wrap
from titans.models import VARIANTS

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 300


def tiny(variant, **overrides):
    torch.manual_seed(0)
    cfg = TitansConfig.from_preset("tiny", variant, vocab_size=VOCAB, hidden_size=32,
                                   segment_len=8, window_size=6, chunk_size=4, **overrides)
    return TitansLM(cfg).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    text = "The whale swam over the sea, and the captain of the ship called the crew. " * 40
    return train_bpe([text], VOCAB, tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_config_carries_every_titans_field_and_validates():
    cfg = TitansConfig.from_preset("tiny", "mag", vocab_size=VOCAB, memory_depth=3)
    hf = TitansHFConfig.from_titans(cfg, eos_token_id=5)
    assert hf.to_titans() == cfg
    assert (hf.model_type, hf.num_attention_heads, hf.pad_token_id) == ("titans", 2, 5)
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1"):
        TitansHFConfig(hidden_size=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tied", [True, False])
def test_save_and_load_give_identical_logits(variant, tied, tmp_path):
    model = tiny(variant, tie_word_embeddings=tied)
    export_model(model, tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, TitansForCausalLM)
    assert (loaded.model.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    ids = torch.randint(0, VOCAB, (2, 19))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert torch.equal(loaded(ids, logits_to_keep=3).logits, model(ids).logits[:, -3:])
    hidden = AutoModel.from_pretrained(tmp_path / "m")(ids).last_hidden_state
    assert torch.equal(hidden, model.hidden_states(ids)[0])
    assert AutoConfig.from_pretrained(tmp_path / "m").to_titans() == model.config


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_equals_titans_generate(variant):
    """Greedy and seeded sampling (temperature, top-k) give TitansLM.generate's tokens."""
    model = tiny(variant)
    hf = wrap(model, eos_token_id=None)
    prompt = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    greedy = hf.generate(prompt, max_new_tokens=14, do_sample=False)
    assert torch.equal(greedy, model.generate(prompt, 14, temperature=0))
    torch.manual_seed(3)
    sampled = hf.generate(prompt, max_new_tokens=14, do_sample=True, temperature=0.7, top_k=40,
                          top_p=1.0)
    torch.manual_seed(3)
    assert torch.equal(sampled, model.generate(prompt, 14, temperature=0.7, top_k=40))


def test_generate_stops_at_eos_like_titans_generate():
    model = tiny("lmm")
    prompt = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    free = model.generate(prompt, 12, temperature=0)
    eos = int(free[0, 9])
    hf = wrap(model, eos_token_id=eos)
    out = hf.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, model.generate(prompt, 12, temperature=0, eos_token_id=eos))
    assert out.shape[1] < free.shape[1] and int(out[0, -1]) == eos


@pytest.mark.parametrize("variant", ["mac", "swa"])
def test_beam_search_with_the_cache_equals_recomputing_from_scratch(variant):
    """Beams reorder the recurrent state (TitansState.select): the same result as generating
    without a cache, which recomputes every step from the full sequence."""
    hf = wrap(tiny(variant))
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(4))
    kwargs = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    cached = hf.generate(prompt, **kwargs)
    assert torch.equal(cached, hf.generate(prompt, use_cache=False, **kwargs))
    assert cached.shape == (4, 13)


def test_a_returned_cache_continues_the_stream():
    model = tiny("mag")
    hf = wrap(model)
    ids = torch.randint(0, VOCAB, (1, 20))
    out = hf(ids[:, :12], use_cache=True)
    assert isinstance(out.cache, TitansCache) and out.cache.get_seq_length() == 12
    rest = hf(ids[:, 12:], cache=out.cache).logits
    assert torch.equal(rest, model(ids).logits[:, 12:])
    assert hf(ids, use_cache=False).cache is None


def test_what_cannot_work_with_a_recurrent_state_is_refused():
    hf = wrap(tiny("mac"))
    ids = torch.randint(0, VOCAB, (2, 5))
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="attention_mask has padding"):
        hf.generate(ids, attention_mask=mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="inputs_embeds is not supported"):
        hf(inputs_embeds=torch.zeros(1, 2, 32))
    cache = hf(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="cannot be rewound"):
        cache.crop(3)
    loss = hf(ids, labels=ids).loss
    assert torch.isclose(loss, hf.model(ids, labels=ids).loss)


def test_exported_tokenizer_loads_with_auto_tokenizer(tokenizer, tmp_path):
    model = tiny("mac")
    export_model(model, tmp_path / "m", tokenizer)
    auto = AutoTokenizer.from_pretrained(tmp_path / "m")
    text = "The captain of the ship, and the whale."
    assert auto(text)["input_ids"] == tokenizer.encode(text)
    assert auto.eos_token_id == tokenizer.eos_id == AutoConfig.from_pretrained(
        tmp_path / "m").eos_token_id
    assert auto.decode(tokenizer.encode(text)) == text
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(model, tmp_path / "m", tokenizer)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging directory left


@pytest.mark.slow
def test_titans_export_turns_a_run_into_a_loadable_directory(write_config, tmp_path):
    run, out = tmp_path / "run", tmp_path / "exported"
    cmd = [sys.executable, "-m", "titans.cli"]
    subprocess.run([*cmd, "train", "--config", str(write_config()), "--out", str(run)],
                   check=True, capture_output=True)
    subprocess.run([*cmd, "export", "--run", str(run), "--out", str(out)], check=True,
                   capture_output=True)
    script = (
        "import sys, torch, titans.hf\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from titans.experiments.single_run import load_run\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = t('the people of our nation', return_tensors='pt')['input_ids']\n"
        "ref = load_run(sys.argv[2])[0]\n"
        "out = m.generate(ids, max_new_tokens=8, do_sample=False)\n"
        "print(torch.equal(out, ref.generate(ids, 8, temperature=0)), out.shape[1])\n"
    )
    shown = subprocess.run([sys.executable, "-c", script, str(out), str(run)], check=True,
                           capture_output=True, text=True).stdout.split()
    assert shown[0] == "True" and int(shown[1]) > 5
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "titans" and config["architectures"] == ["TitansForCausalLM"]
    again = subprocess.run([*cmd, "export", "--run", str(run), "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
