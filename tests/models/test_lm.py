"""TitansLM for every variant: the three equivalences, causality, learning at inference,
overfitting, bounded state, generation and errors."""

import dataclasses

import pytest
import torch

from titans import RuntimeConfig, TitansConfig, TitansLM, apply_runtime
from titans.models import ABLATIONS, VARIANTS

MEMORY_VARIANTS = ("mac", "mag", "mal", "lmm")
SMALL_BLOCKS = RuntimeConfig(attention_block_size=5)


def config(variant, dtype_safe=True, **overrides):
    """A model small enough for float64 token-by-token tests that still crosses several MAC
    segments, attention windows and memory chunks on ~50 tokens."""
    values = dict(variant=variant, vocab_size=61, hidden_size=32, num_hidden_layers=2,
                  num_heads=2, segment_len=12, window_size=7, chunk_size=4,
                  memory_expansion=2)
    if variant in ("mac", "mag", "mal"):
        values["num_persistent_tokens"] = 3
    return TitansConfig(**{**values, **overrides})


def model_for(cfg, dtype=torch.float64, seed=0):
    """The model of ``cfg``, with attention blocks of 5 queries, so that ~50 tokens cross
    several blocks too."""
    torch.manual_seed(seed)
    return apply_runtime(TitansLM(cfg).to(dtype), SMALL_BLOCKS)


CASES = [(v, {}) for v in VARIANTS] + [
    ("mac", ABLATIONS["linear_memory"]), ("mac", ABLATIONS["no_conv"]),
    ("mac", ABLATIONS["no_persistent"]), ("mag", {**ABLATIONS["no_momentum"], "memory_depth": 3}),
    ("mal", ABLATIONS["no_decay"]), ("mag", {"segment_len": 5, "window_size": 30}),
    ("mac", {"mac_memory_input": "attention", "memory_conv_init": "induction"}),
    ("lmm", {"memory_conv_init": "induction"}),
    ("mal", {"mal_memory_skip": False, "memory_conv_init": "induction"}),
]
IDS = [f"{v}-{'-'.join(o) or 'default'}" for v, o in CASES]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(("variant", "overrides"), CASES, ids=IDS)
def test_one_pass_equals_pieces_and_token_by_token_decode(variant, overrides,
                                                          check_stream_equivalences):
    """Logits and final state of one pass == random pieces with carried state == prefill +
    one token at a time; T = 53 is a multiple of no segment, window or chunk."""
    model = model_for(config(variant, **overrides))
    ids = torch.randint(0, 61, (2, 53), generator=torch.Generator().manual_seed(1))
    check_stream_equivalences(model, ids, prefill=20)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    """Changing token j changes no logit before j (and does change later ones)."""
    model = model_for(config(variant))
    ids = torch.randint(0, 61, (1, 40), generator=torch.Generator().manual_seed(2))
    base = model(ids).logits
    for j in (0, 11, 12, 25, 39):
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 1) % 61
        logits = model(changed).logits
        torch.testing.assert_close(logits[:, :j], base[:, :j], rtol=0, atol=1e-12)
        assert (logits[:, j:] - base[:, j:]).abs().max() > 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_memory_keeps_learning_at_inference(variant, context):
    """Two prefixes, the same suffix, evaluated in eval mode without autograd: the suffix logits
    far beyond the attention's reach differ for memory variants (the memory learned the prefix)
    and for full attention, and are identical for SWA (receptive field = layers * (window - 1))."""
    cfg = config(variant)
    model = model_for(cfg).eval()
    gen = torch.Generator().manual_seed(3)
    prefix_a, prefix_b = torch.randint(0, 61, (2, 1, 24), generator=gen)
    suffix = torch.randint(0, 61, (1, 40), generator=gen)
    grad_context = torch.inference_mode() if context == "inference_mode" else torch.no_grad()
    with grad_context:
        logits_a = model(torch.cat([prefix_a, suffix], 1)).logits
        logits_b = model(torch.cat([prefix_b, suffix], 1)).logits
    # Positions whose sliding-window receptive field lies entirely in the shared suffix; for MAC
    # also outside the prefix's segments (segment_len 12: positions >= 24 start a new segment).
    reach = 24 + cfg.num_hidden_layers * (cfg.window_size - 1)
    diff = (logits_a[:, reach:] - logits_b[:, reach:]).abs().max().item()
    if variant == "swa":
        assert diff == 0.0
    else:
        assert diff > 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_model_overfits_a_batch(variant):
    """Real learning through every part of the model: the loss on one fixed batch falls far."""
    cfg = config(variant, vocab_size=32, hidden_size=48, segment_len=16, window_size=16)
    model = model_for(cfg, torch.float32)
    ids = torch.randint(0, 32, (4, 48), generator=torch.Generator().manual_seed(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(80):
        loss = model(ids, labels=ids).loss
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = model(ids, labels=ids).loss.item()
    assert first > 3.0
    assert final < 0.3 * first, (first, final)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_memory_does_not_grow_with_tokens(variant):
    """Bytes held by the state after 60 and after 900 tokens (same phase of every segment,
    window and chunk) are equal; only full attention's KV cache grows."""
    model = model_for(config(variant), torch.float32)
    sizes = []
    with torch.inference_mode():
        state = None
        for n in range(15):
            state = model(torch.randint(0, 61, (1, 60)), state).state
            if n in (0, 14):
                sizes.append(state.num_bytes())
    if variant == "transformer":
        assert sizes[1] > 10 * sizes[0]
    else:
        assert sizes[0] == sizes[1]


def test_state_size_is_bounded_within_segments_and_windows():
    """MAC's segment cache and MAG's window cache never exceed their stated bounds."""
    for variant, bound in (("mac", 2 * (12 - 1)), ("mag", 7 - 1)):
        model = model_for(config(variant), torch.float32)
        state = None
        with torch.inference_mode():
            for _ in range(40):
                state = model(torch.randint(0, 61, (1, 1)), state).state
                assert all(s.kv.length <= bound for s in state.layers)


def test_labels_give_the_shifted_cross_entropy_and_ignore_index():
    model = model_for(config("mag"))
    ids = torch.randint(0, 61, (2, 17))
    labels = ids.clone()
    labels[0, 5] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 61)
    target = labels[:, 1:].reshape(-1)
    keep = target != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(out.loss, expected.float(), rtol=1e-6, atol=0)
    assert keep.sum() == 2 * 16 - 1


@pytest.mark.parametrize("scored", ["answer", "all"])
def test_loss_without_logits_equals_the_full_loss_and_its_gradients(scored):
    """return_logits=False runs the head only where a label is scored: same loss, same
    gradients for every parameter, no logits."""
    ids = torch.randint(0, 61, (3, 23))
    labels = ids.clone()
    if scored == "answer":  # a few scored positions per row, as in task fine-tuning
        labels[:, :-3] = -100
        labels[1, -1] = -100
    full, sparse = model_for(config("mac")), model_for(config("mac"))
    loss = full(ids, labels=labels).loss
    out = sparse(ids, labels=labels, return_logits=False)
    assert out.logits is None
    # The loss is reduced in float32 (as the full path does), in another summation order.
    torch.testing.assert_close(out.loss, loss, rtol=1e-6, atol=0)
    loss.backward()
    out.loss.backward()
    for (name, a), b in zip(full.named_parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-14, msg=name)
    with pytest.raises(ValueError, match="only makes sense with labels"):
        sparse(ids, return_logits=False)


def test_logits_to_keep_returns_the_last_positions():
    model = model_for(config("mac"))
    ids = torch.randint(0, 61, (1, 19))
    torch.testing.assert_close(model(ids, logits_to_keep=3).logits, model(ids).logits[:, -3:])


@pytest.mark.parametrize("variant", ["mac", "swa"])
def test_greedy_generate_matches_argmax_of_the_full_forward(variant):
    """Generated tokens are the argmax of a fresh full forward over everything so far."""
    model = model_for(config(variant))
    prompt = torch.randint(0, 61, (2, 9))
    out = model.generate(prompt, max_new_tokens=15, temperature=0)
    assert out.shape == (2, 24)
    assert torch.equal(out[:, :9], prompt)
    for t in range(9, 24):
        assert torch.equal(out[:, t], model(out[:, :t]).logits[:, -1].argmax(-1))
    assert torch.equal(model.generate(prompt, 15, top_k=1), out)
    assert torch.equal(model.generate(prompt, 15, top_p=1e-9), out)


def test_sampling_respects_top_k_and_top_p():
    from titans.models import sample_next_token

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, top_k=2, generator=gen).tolist()) == {0, 1}
    # top_p = 0.7: tokens 0 (0.5) and 1 (0.3) are needed to reach 0.7, token 2 is not.
    assert set(sample_next_token(logits, top_p=0.7, generator=gen).tolist()) == {0, 1}
    counts = torch.bincount(sample_next_token(logits, generator=gen), minlength=4) / 2000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04, rtol=0)
    sharp = sample_next_token(logits, temperature=0.05, generator=gen)
    assert (sharp == 0).float().mean() > 0.99


def test_generate_stops_at_eos():
    model = model_for(config("lmm"))
    prompt = torch.randint(0, 61, (1, 5))
    greedy = model.generate(prompt, 10, temperature=0)
    eos = int(greedy[0, 7])
    first = 5 + greedy[0, 5:].tolist().index(eos)
    out = model.generate(prompt, 10, temperature=0, eos_token_id=eos)
    assert torch.equal(out, greedy[:, :first + 1])


def test_generate_continues_a_stream_from_a_state():
    model = model_for(config("mag"))
    ids = torch.randint(0, 61, (1, 30))
    state = model(ids[:, :20]).state
    out = model.generate(ids[:, 20:], 5, temperature=0, state=state)
    assert torch.equal(out, model.generate(ids, 5, temperature=0)[:, 20:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_selected_state_rows_continue_their_own_streams(variant):
    """state.select(rows) continues stream rows[i] in row i (repeats allowed), with a memory
    chunk and a MAC segment left open, exactly as that stream run alone."""
    model = model_for(config(variant))
    ids, more = torch.randint(0, 61, (3, 14)), torch.randint(0, 61, (4, 6))
    rows = [2, 0, 2, 1]
    out = model(more, model(ids).state.select(rows))
    for i, r in enumerate(rows):
        alone = model(more[i:i + 1], model(ids[r:r + 1]).state)
        torch.testing.assert_close(out.logits[i:i + 1], alone.logits, rtol=1e-12, atol=1e-12)
    assert out.state.batch_size == 4 and out.state.position == 20
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 3\)"):
        model(ids).state.select([3])
    with pytest.raises(ValueError, match="1-d"):
        model(ids).state.select([[0]])


def test_hidden_states_are_what_the_lm_head_reads():
    model = model_for(config("mal"))
    ids = torch.randint(0, 61, (2, 11))
    hidden, state = model.hidden_states(ids)
    out = model(ids)
    torch.testing.assert_close(model.lm_head(hidden), out.logits, rtol=0, atol=0)
    assert state.position == out.state.position == 11
    with pytest.raises(ValueError, match="token ids must lie"):
        model.hidden_states(ids + 61)


def test_num_parameters_counts_tied_weights_once():
    model = model_for(config("transformer"))
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.num_parameters() == sum(unique.values())
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - 61 * 32
    untied = model_for(config("transformer", tie_word_embeddings=False))
    assert untied.num_parameters() == model.num_parameters() + 61 * 32


def test_bad_inputs_raise_clear_errors():
    model = model_for(config("mac"))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[0, 61]]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="labels"):
        model(torch.zeros(1, 3, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long))
    state = model(torch.zeros(2, 3, dtype=torch.long)).state
    with pytest.raises(ValueError, match="batch size"):
        model(torch.zeros(1, 3, dtype=torch.long), state)
    other = model_for(config("mac", num_hidden_layers=3))
    with pytest.raises(ValueError, match="num_hidden_layers': \\(2, 3\\)"):
        other(torch.zeros(2, 3, dtype=torch.long), state)
    negative = dataclasses.replace(state, position=-4)
    with pytest.raises(ValueError, match=r"^state.position must be an int >= 0, got -4"):
        model(torch.zeros(2, 3, dtype=torch.long), negative)
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^input_ids has no tokens"):
        model(ids[:, :0])
    with pytest.raises(ValueError, match=r"^labels must be -100 \(not scored\) or lie in \[0, 61"):
        model(ids, labels=torch.tensor([[0, 61, -100], [0, 1, 2]]))
    with pytest.raises(ValueError, match=r"^labels must be -100 \(not scored\) or lie in"):
        model(ids, labels=torch.tensor([[0, -5, 1], [0, 1, 2]]))
    with pytest.raises(ValueError, match=r"^labels must be an integer tensor"):
        model(ids, labels=ids.double())
    with pytest.raises(ValueError, match=r"^labels need at least 2 tokens"):
        model(ids[:, :1], labels=ids[:, :1])
    with pytest.raises(ValueError, match=r"^logits_to_keep must be an int >= 0, got -1"):
        model(ids, logits_to_keep=-1)
    prompt = torch.zeros(1, 3, dtype=torch.long)
    for bad in (-1, float("nan"), float("inf")):  # inf would sample uniformly: noise, not text
        with pytest.raises(ValueError, match=r"^temperature must be a finite number >= 0"):
            model.generate(prompt, 2, temperature=bad)
    with pytest.raises(ValueError, match=r"^max_new_tokens must be an int >= 0, got 2.5"):
        model.generate(prompt, 2.5)
    with pytest.raises(ValueError, match=r"^top_k must be None or an int >= 1, got 2.5"):
        model.generate(prompt, 2, top_k=2.5)



@pytest.mark.parametrize(("maker", "user", "field"), [
    (config("mac"), config("mag"), "variant"), (config("mac"), config("lmm"), "variant"),
    (config("lmm"), config("mac"), "variant"), (config("mac"), config("swa"), "variant"),
    (config("mac"), config("mac", hidden_size=64), "hidden_size"),
])
def test_a_state_fits_only_a_model_of_its_config(maker, user, field):
    """Before, a MAC state in a MAG model returned logits, and other pairs failed deep inside
    with AttributeError or a shape error."""
    ids = torch.zeros(2, 5, dtype=torch.long)
    state = model_for(maker)(ids).state
    with pytest.raises(ValueError, match=f"^state was made by a model of another config.*"
                                         f"'{field}'"):
        model_for(user)(ids, state)
    # A state of an equal config made by another instance continues that instance's stream.
    assert model_for(maker, seed=1)(ids, state).state.position == 10


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_autocast_trains_and_streams(variant):
    """Under bf16 autocast (the GPU training setting): forward, backward inside the autocast
    region and continuing from the state work; memory states stay float32."""
    model = model_for(config(variant), torch.float32)
    ids = torch.randint(0, 61, (2, 30))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
        out.loss.backward()
        nxt = model(ids[:, :5], out.state)
    assert torch.isfinite(out.loss) and torch.isfinite(nxt.logits.float()).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    memories = [s if variant == "lmm" else s.memory for s in nxt.state.layers
                ] if variant in MEMORY_VARIANTS else []
    assert all(m.memory.weights[0].dtype == torch.float32 for m in memories)
