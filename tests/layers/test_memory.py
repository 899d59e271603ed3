"""NeuralMemory: the three equivalences, causality, test-time learning, optimizers, stability."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import titans.layers.memory as memory_module
from titans import NeuralMemory, NeuralMemoryState
from titans.ops import MemoryState, memory_naive

HIDDEN, HEADS, HEAD_DIM = 32, 2, 8

CONFIGS = {
    "default": {},
    "linear": {"memory_depth": 1},
    "deep3-silu-plain": {"memory_depth": 3, "activation": "silu", "residual_norm": False},
    "no-momentum": {"use_momentum": False},
    "no-decay": {"use_decay": False},
    "no-conv": {"conv_kernel": 0},
    "induction-conv": {"conv_init": "induction"},
}


def make_layer(seed: int = 0, **kw) -> NeuralMemory:
    torch.manual_seed(seed)
    kw.setdefault("chunk_size", 4)
    return NeuralMemory(HIDDEN, HEADS, HEAD_DIM, **kw).double()


def make_x(t_len: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, t_len, HIDDEN, generator=g, dtype=torch.float64)


def use_naive_op(monkeypatch) -> None:
    """Make the layer call the token-by-token reference instead of the chunked op."""

    def naive(*args, checkpoint_chunks=None, compile_step=False, **kwargs):
        return memory_naive(*args, **kwargs)

    monkeypatch.setattr(memory_module, "memory_chunked", naive)


def run_pieces(layer, x, cuts, state=None):
    outs = []
    bounds = [0, *cuts, x.shape[1]]
    for a, b in itertools.pairwise(bounds):
        y, state = layer(x[:, a:b], state)
        outs.append(y)
    return torch.cat(outs, 1), state


def assert_states_equal(a: NeuralMemoryState, b: NeuralMemoryState) -> None:
    for m, n in ((a.memory, b.memory), (a.current, b.current)):
        for x, y in zip(m.weights + m.momentum, n.weights + n.momentum, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert a.num_pending == b.num_pending
    for x, y in zip(a.pending, b.pending, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    if a.conv is not None:
        torch.testing.assert_close(a.conv, b.conv, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_pass_equals_random_pieces_equals_token_by_token(name):
    layer = make_layer(**CONFIGS[name])
    x = make_x(23)  # chunk 4: pieces end mid-chunk
    full, full_state = layer(x)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        cuts = sorted(torch.randperm(22, generator=g)[:5].add(1).tolist())
        pieces, state = run_pieces(layer, x, cuts)
        torch.testing.assert_close(pieces, full, rtol=1e-10, atol=1e-12)
        assert_states_equal(state, full_state)
    stepwise, state = run_pieces(layer, x, list(range(1, 23)))
    torch.testing.assert_close(stepwise, full, rtol=1e-10, atol=1e-12)
    assert_states_equal(state, full_state)


@pytest.mark.parametrize("name", ["default", "deep3-silu-plain"])
def test_layer_equals_naive_reference(name, monkeypatch):
    """The layer's use of the op (pending replay, split calls) matches the token-by-token op."""
    layer = make_layer(**CONFIGS[name])
    x = make_x(14)
    # pieces inside the open chunk (0-3, 13-14) and pieces that close one (3-9, 9-13)
    y_fast, state_fast = run_pieces(layer, x, [3, 9, 13])
    use_naive_op(monkeypatch)
    y_ref, state_ref = layer(x)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-12)
    # the running memory is the reference's state after the last token
    assert_states_equal(state_fast, state_ref)


@pytest.mark.parametrize("name", ["default", "deep3-silu-plain"])
def test_decode_inside_the_open_chunk_calls_no_chunked_op(name, monkeypatch):
    """Decode steps with pending tokens that stay inside the open chunk run memory_recurrent
    alone (no replay) and give the outputs and state of one pass."""
    layer = make_layer(**CONFIGS[name], chunk_size=8)
    x = make_x(13)
    full, full_state = layer(x)
    _, state = layer(x[:, :9])  # one whole chunk and one pending token

    def no_chunked(*args, **kwargs):
        raise AssertionError("memory_chunked called inside the open chunk")

    monkeypatch.setattr(memory_module, "memory_chunked", no_chunked)
    for t in range(9, 13):
        y, state = layer(x[:, t:t + 1], state)
        torch.testing.assert_close(y, full[:, t:t + 1], rtol=1e-10, atol=1e-12)
    assert state.num_pending == 5
    assert_states_equal(state, full_state)


def test_pieces_give_the_gradients_of_one_pass():
    """Training on pieces (inside open chunks and across them) back-propagates through the
    running memory exactly as through one pass."""
    layer = make_layer()
    x = make_x(11)
    probe = torch.randn(2, 11, HIDDEN, generator=torch.Generator().manual_seed(5),
                        dtype=torch.float64)
    names, params = zip(*layer.named_parameters(), strict=True)
    full, _ = layer(x)
    pieces, _ = run_pieces(layer, x, [1, 2, 3, 6, 7, 9, 10])
    for name, a, b in zip(names, torch.autograd.grad((pieces * probe).sum(), params),
                          torch.autograd.grad((full * probe).sum(), params), strict=True):
        # The gates are float32 (NeuralMemory.gates), so their gradients are summed in float32,
        # in an order that depends on the split.
        atol = 1e-6 * b.abs().max().item() if name.startswith("gate_proj") else 1e-12
        torch.testing.assert_close(a, b, rtol=1e-9, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def test_checkpointing_changes_no_gradient():
    x = make_x(30)
    grads = []
    for checkpoint_chunks in (None, 2):
        layer = make_layer(checkpoint_chunks=checkpoint_chunks)
        y, _ = layer(x)
        y.pow(2).sum().backward()
        grads.append([p.grad for p in layer.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_causality():
    layer = make_layer()
    x = make_x(21)
    y, _ = layer(x)
    for j in (0, 6, 13, 20):
        x2 = x.clone()
        x2[:, j] += torch.randn_like(x2[:, j])
        y2, _ = layer(x2)
        torch.testing.assert_close(y2[:, :j], y[:, :j], rtol=0, atol=0)
        assert (y2[:, j] - y[:, j]).abs().max() > 1e-6


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "eval"])
def test_memory_keeps_learning_at_inference(mode):
    layer = make_layer()
    prefix_a, prefix_b, suffix = make_x(16, seed=2), make_x(16, seed=3), make_x(8, seed=4)
    with torch.enable_grad():
        reference, _ = layer(torch.cat([prefix_a, suffix], 1))
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(
        mode, torch.enable_grad
    )
    if mode == "eval":
        layer.eval()
    with context():
        _, state_a = layer(prefix_a)
        _, state_b = layer(prefix_b)
        y_a, _ = layer(suffix, state_a)
        y_b, _ = layer(suffix, state_b)
        assert (y_a - y_b).abs().max() > 1e-4  # what was read changes what is recalled
        # the memory moved away from its initial weights
        assert (state_a.memory.weights[0] - layer.memory_init[0]).abs().max() > 1e-4
    torch.testing.assert_close(y_a, reference[:, 16:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
@pytest.mark.parametrize("foreach", [False, True])
def test_optimizer_updates_every_head_independently(optimizer, foreach):
    layer = make_layer(seed=3, chunk_size=8)
    for w in layer.memory_init:
        assert w.is_contiguous() and 0 not in w.stride()
    before = [w.detach().clone() for w in layer.memory_init]
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    opt = opt_cls(layer.parameters(), lr=1e-2, foreach=foreach)
    for _ in range(2):
        y, _ = layer(make_x(24))
        y.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    for w, w0 in zip(layer.memory_init, before, strict=True):
        delta = w.detach() - w0
        assert (delta[0].abs().amax() > 0) and (delta[1].abs().amax() > 0)
        assert not torch.allclose(delta[0], delta[1])  # heads are separate parameters


@pytest.mark.parametrize("bias", [(0.0, 60.0, -60.0), (60.0, -60.0, 60.0), (60.0, 60.0, 60.0)])
def test_gates_at_extremes(bias, monkeypatch):
    """Saturated gates (eta or alpha exactly 0 or 1 in float64) stay finite and exact."""
    layer = make_layer()
    with torch.no_grad():
        layer.gate_proj.weight.zero_()
        layer.gate_proj.bias.copy_(torch.tensor(bias).repeat_interleave(HEADS))
    x = make_x(13)
    y, state = layer(x)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(w).all() for w in state.memory.weights)
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    use_naive_op(monkeypatch)
    y_ref, _ = layer(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-12)


def test_gates_start_inside_their_caps():
    """theta <= max_lr / chunk_size, eta <= max_momentum, alpha <= max_decay, starting at half
    the step bound, 0.9 of the momentum cap and 0.01 of the decay cap; the residual norm's
    weight starts at 1 / sqrt(head_dim) (||LN(z) * weight|| = 1 = ||k||) and its bias at 0."""
    layer = make_layer(chunk_size=8, max_lr=0.2, max_momentum=0.8, max_decay=0.5)
    with torch.no_grad():
        lr, eta, alpha = layer.gates(make_x(5))
        layer.gate_proj.weight.fill_(100.0)
        caps = layer.gates(torch.ones(1, 3, HIDDEN, dtype=torch.float64))
    torch.testing.assert_close(lr.mean().item(), 0.2 / 8 / 2, rtol=0.05, atol=0)
    torch.testing.assert_close(eta.mean().item(), 0.8 * 0.9, rtol=0.05, atol=0)
    torch.testing.assert_close(alpha.mean().item(), 0.5 * 0.01, rtol=0.05, atol=0)
    for gate, cap in zip(caps, (0.2 / 8, 0.8, 0.5), strict=True):
        torch.testing.assert_close(gate, torch.full_like(gate, cap))
    torch.testing.assert_close(layer.memory_norm_weight.detach(),
                               torch.full((HEADS, HEAD_DIM), HEAD_DIM**-0.5, dtype=torch.float64))
    assert torch.equal(layer.memory_norm_bias, torch.zeros(HEADS, HEAD_DIM, dtype=torch.float64))
    assert make_layer(residual_norm=False).memory_norm_weight is None


def test_stable_over_100k_tokens_float32():
    torch.manual_seed(0)
    layer = NeuralMemory(hidden_size=128, num_heads=2, head_dim=64)
    state = None
    with torch.no_grad():
        for _ in range(25):
            y, state = layer(torch.randn(1, 4000, 128), state)
            assert torch.isfinite(y).all()
    assert all(torch.isfinite(w).all() for w in state.memory.weights + state.memory.momentum)


def test_autocast_keeps_memory_state_in_float32():
    """Under bf16 autocast the memory's state stays float32, a backward inside the autocast
    region works (the checkpoint recomputation too), and the state carries on."""
    layer = NeuralMemory(HIDDEN, HEADS, HEAD_DIM, chunk_size=4, checkpoint_chunks=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(torch.randn(1, 9, HIDDEN))
        y.float().pow(2).mean().backward()
        y2, state2 = layer(torch.randn(1, 5, HIDDEN), state)
        h, _ = layer.retrieve(torch.randn(1, 3, HIDDEN), state2.memory)
    assert state.memory.weights[0].dtype == torch.float32
    assert state2.memory.weights[0].dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(y2).all() and torch.isfinite(h).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.memory_init)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"memory_depth": 0}, "memory_depth"),
        ({"activation": "tanh"}, "activation"),
        ({"max_lr": 0.0}, "max_lr"),
        ({"conv_kernel": -1}, "conv_kernel"),
        ({"checkpoint_chunks": 0}, "checkpoint_chunks"),
        ({"max_momentum": 1.5}, "max_momentum"),
        ({"max_decay": 0.0}, "max_decay"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"max_decay": "0.1"}, "max_decay must be a finite number"),
        ({"chunk_size": True}, "chunk_size must be an int >= 1, got True"),
        ({"chunk_size": None}, "chunk_size must be an int >= 1, got None"),
        ({"memory_expansion": 2.0}, "memory_expansion must be an int >= 1, got 2.0"),
        ({"conv_init": "shifted"}, "conv_init must be one of"),
        ({"conv_init": "induction", "conv_kernel": 1}, "needs conv_kernel >= 2"),
    ],
)
def test_bad_config_raises(kw, message):
    with pytest.raises(ValueError, match=message):
        NeuralMemory(HIDDEN, HEADS, HEAD_DIM, **kw)


def test_input_of_another_dtype_is_refused_unless_autocast_casts_it():
    memory = NeuralMemory(HIDDEN, HEADS, HEAD_DIM, chunk_size=4)  # float32 weights
    for x in (torch.zeros(1, 5, HIDDEN, dtype=torch.long), torch.zeros(1, 5, HIDDEN).double(),
              torch.zeros(1, 5, HIDDEN).bfloat16()):
        with pytest.raises(ValueError, match=r"^x must be a floating tensor of dtype "
                                             r"torch.float32 \(the memory's weights"):
            memory(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x in (torch.randn(1, 5, HIDDEN), torch.randn(1, 5, HIDDEN).bfloat16()):
            y, _ = memory(x)
            assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("width", [2, 4])
def test_induction_conv_init_makes_keys_of_the_next_token_match_queries(width):
    """With conv_init="induction" (and key and query projections made equal, as training can
    learn), the key of the token after an earlier occurrence of a context equals the query at
    the end of its later occurrence; with the default init it does not."""
    x = make_x(14, batch=1)[0]
    # Token 11 repeats the context of tokens 3 .. 3 + width - 2 (its last width - 1 tokens).
    x[11 - width + 2:12] = x[3 - width + 2:4]
    for conv_init in ("induction", "default"):
        layer = make_layer(conv_init=conv_init, conv_kernel=width)
        inner = HEADS * HEAD_DIM
        with torch.no_grad():
            layer.qkv_proj.weight[inner:2 * inner] = layer.qkv_proj.weight[:inner]
        q, k, v, _ = layer._qkv(x[None], layer.init_state(1).conv)
        proj_v = torch.nn.functional.silu(x @ layer.qkv_proj.weight[2 * inner:].T)
        match = (q[0, 11] * k[0, 4]).sum(-1)  # [H] cosine: q and k are unit vectors
        if conv_init == "induction":
            torch.testing.assert_close(match, torch.ones_like(match))
            torch.testing.assert_close(v[0].flatten(1), proj_v)  # values: the token itself
        else:
            assert match.max() < 0.99
    layer = make_layer(conv_init="induction")
    taps = layer.conv.weight[:, 0]  # [3 * inner, width]
    assert (taps[:inner, 0] == 0).all() and (taps[inner:2 * inner, -1] == 0).all()
    assert torch.equal(taps[:inner, 1:], taps[inner:2 * inner, :-1])


def test_bad_input_raises():
    layer = make_layer()
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(2, 5, HIDDEN + 1, dtype=torch.float64))
    _, state = layer(make_x(5, batch=2))
    with pytest.raises(ValueError, match="batch size"):
        layer(make_x(5, batch=3), state)
    with pytest.raises(ValueError, match="conv cache"):
        make_layer(conv_kernel=0)(make_x(5), state)
    with pytest.raises(ValueError, match="pending"):
        make_layer(chunk_size=1)(make_x(5), state)
    shallow = MemoryState(state.current.weights[:1], state.current.momentum[:1])
    with pytest.raises(ValueError, match="current memory"):
        layer(make_x(5), dataclasses.replace(state, current=shallow))
