"""The MAC block computes eqs. 21-25 in the stated order; every mixer resumes from its state."""

import pytest
import torch

from titans.models import TitansConfig
from titans.models.blocks import MACMixer, MAGMixer, MALMixer, OutputGate
from titans.models.lm import _tensors


def mac_config(**overrides):
    values = dict(variant="mac", vocab_size=11, hidden_size=16, num_hidden_layers=1, num_heads=2,
                  segment_len=8, chunk_size=4, memory_expansion=2, num_persistent_tokens=2)
    return TitansConfig(**{**values, **overrides})


def recording(module, calls):
    """Wrap module.forward to record its arguments and outputs."""
    forward = module.forward

    def wrapper(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    module.forward = wrapper


@pytest.mark.parametrize("memory_input", ["attention", "residual"])
def test_mac_reads_the_previous_segments_memory_and_writes_attention_outputs(memory_input):
    """Segment 2: h = M*_1(q) with M_1 the memory after segment 1 (eq. 21); attention sees
    [p || h || x] (22-23); the memory learns from u = y (24; x + y with the residual input);
    o = y (x) M*(u) (25)."""
    torch.manual_seed(0)
    mixer = MACMixer(mac_config(mac_memory_input=memory_input)).double()
    x = torch.randn(2, 16, 16, dtype=torch.float64)
    _, after_first = mixer(x[:, :8], 0, mixer.init_state(2))

    attn_calls, memory_calls = [], []
    recording(mixer.attn, attn_calls)
    recording(mixer.memory, memory_calls)
    out, _ = mixer(x, 0, mixer.init_state(2))
    assert len(attn_calls) == 2 and len(memory_calls) == 2  # one call per segment

    # Eq. 21: the retrieved tokens of segment 2 read the memory left by segment 1.
    h2 = attn_calls[1][1]["context"]
    expected_h2, _ = mixer.memory.retrieve(x[:, 8:], after_first.memory.memory,
                                           after_first.query_conv)
    torch.testing.assert_close(h2, expected_h2, rtol=1e-12, atol=1e-12)
    # ... and not the memory after segment 2, nor the initial memory.
    initial = mixer.init_state(2).memory.memory
    stale, _ = mixer.memory.retrieve(x[:, 8:], initial, after_first.query_conv)
    assert (h2 - stale).abs().max() > 1e-6
    # Eqs. 22-23: persistent tokens as the prefix, queries from the segment itself.
    args, kwargs, (y2, _) = attn_calls[1]
    assert torch.equal(args[0], x[:, 8:]) and torch.equal(kwargs["prefix"], mixer.persistent)
    assert torch.equal(args[1], torch.arange(8))  # positions restart in every segment
    # Eq. 24: the memory is written with the attention output y (or the stream x + y).
    u2 = y2 + x[:, 8:] if memory_input == "residual" else y2
    assert torch.equal(memory_calls[1][0][0], u2)
    # Eq. 25: the output gates y with the memory's per-token read after writing u.
    m2 = memory_calls[1][2][0]
    torch.testing.assert_close(out[:, 8:], mixer.gate(y2, m2), rtol=1e-12, atol=1e-12)


def test_mac_memory_after_a_segment_is_the_memory_trained_on_its_y():
    torch.manual_seed(1)
    mixer = MACMixer(mac_config(mac_memory_input="attention")).double()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    calls = []
    recording(mixer.attn, calls)
    _, state = mixer(x, 0, mixer.init_state(1))
    y = calls[0][2][0]
    _, expected = mixer.memory(y, mixer.memory.init_state(1))
    for got, want in zip(state.memory.memory.weights, expected.memory.weights, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The segment is complete: the next one reads this memory, with an empty context.
    assert state.kv.length == 0
    for got, want in zip(state.segment_memory.weights, expected.memory.weights, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("variant", "mixer_class"), [("mag", MAGMixer), ("mal", MALMixer)])
def test_mag_and_mal_memories_start_after_reading_the_persistent_tokens(variant, mixer_class):
    """M([p || x]) (eqs. 26, 29): the initial state is the memory after the persistent prefix."""
    torch.manual_seed(2)
    cfg = mac_config(variant=variant, num_persistent_tokens=5)
    mixer = mixer_class(cfg).double()
    state = mixer.init_state(3)
    assert state.memory.num_pending == 5 % cfg.chunk_size
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    p = mixer.persistent[None].expand(3, 5, 16)
    together, _ = mixer.memory(torch.cat([p, x], 1))
    after_prefix, _ = mixer.memory(x, state.memory)
    torch.testing.assert_close(after_prefix, together[:, 5:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("variant", "mixer_class"), [("mag", MAGMixer), ("mal", MALMixer)])
def test_primed_memory_read_once_equals_reading_the_prefix_per_sequence(variant, mixer_class):
    """The prefix is read once and its state broadcast over the batch: every tensor of the state
    and the gradients of the persistent tokens and memory parameters equal those of reading the
    prefix in every sequence (float64 model)."""
    torch.manual_seed(4)
    cfg = mac_config(variant=variant, num_persistent_tokens=6)
    mixer = mixer_class(cfg).double()
    batch = 3
    primed = mixer.init_state(batch).memory
    p = mixer.persistent[None].expand(batch, *mixer.persistent.shape)
    _, per_sequence = mixer.memory(p, mixer.memory.init_state(batch))
    got, want = list(_tensors(primed)), list(_tensors(per_sequence))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    params = [mixer.persistent, *mixer.memory.parameters()]
    weights = [torch.randn(t.shape, dtype=t.dtype) for t in want]

    def grads(tensors):
        loss = sum((t * w).sum() for t, w in zip(tensors, weights, strict=True))
        return torch.autograd.grad(loss, params, allow_unused=True)

    # The memory's gates are float32 even in a float64 model (NeuralMemory.gates), so gradients
    # through them agree to float32 rounding (relative to their norm), the rest to float64's.
    for a, b in zip(grads(got), grads(want), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert ((a - b).norm() / b.norm()).item() < 1e-6


@pytest.mark.parametrize("skip", [False, True])
def test_mal_is_attention_over_the_memory_output_with_an_optional_skip(skip):
    """Eqs. 29-31: o = SW-Attn(y) with y = M([p || x]); with mal_memory_skip, o = y + SW-Attn(y)."""
    torch.manual_seed(5)
    mixer = MALMixer(mac_config(variant="mal", window_size=6, mal_memory_skip=skip)).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    state = mixer.init_state(2)
    y, _ = mixer.memory(x, state.memory)
    o, _ = mixer.attn(y, torch.arange(11), state.kv)
    out, _ = mixer(x, 0, state)
    torch.testing.assert_close(out, y + o if skip else o, rtol=1e-12, atol=1e-12)


def test_output_gate_normalises_both_branches():
    """gate(y, m) = RMSNorm(y) * sigmoid(RMSNorm(m)): invariant to the scale of either input."""
    torch.manual_seed(3)
    gate = OutputGate(8, 1e-12).double()
    y, m = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(gate(3 * y, 0.2 * m), gate(y, m), rtol=1e-9, atol=1e-9)
    rms = y.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(gate(y, m), y / rms * torch.sigmoid(m / m.pow(2).mean(
        -1, keepdim=True).sqrt()), rtol=1e-9, atol=1e-9)


def test_mac_needs_chunks_that_divide_the_segment():
    with pytest.raises(ValueError, match="divide segment_len"):
        mac_config(segment_len=10)
