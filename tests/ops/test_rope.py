"""rotary_embedding: rotation properties, an independent complex-number reference, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from titans.ops.rope import rotary_embedding


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of a against the reference b."""
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def complex_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Reference: pair (i, i + D/2) as x_i + 1j x_{i+D/2}, times exp(1j pos base^(-2i/D))."""
    d = x.shape[-1]
    half = d // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    freqs = torch.tensor([base ** (-2.0 * i / d) for i in range(half)], dtype=torch.float64)
    angle = positions.double()[:, None] * freqs[None, :]
    out = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([out.real, out.imag], -1)


@pytest.mark.parametrize("d", [2, 8, 64])
@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_matches_complex_rotation(d, base):
    """Output equals the hand-written complex rotation for small and very large positions."""
    torch.manual_seed(0)
    positions = torch.tensor([0, 1, 2, 7, 100, 4097, 10**6, 10**6 + 13, 123_456_789])
    x = torch.randn(3, positions.numel(), d, dtype=torch.float64)
    got = rotary_embedding(x, positions, base=base)
    want = complex_rope(x, positions, base=base)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # Small positions must agree to float64 round-off.
    torch.testing.assert_close(got[:, :5], want[:, :5], rtol=0, atol=1e-13)


def test_rotate_half_layout():
    """D=4, position 1: pair (0, 2) rotates by 1 rad and pair (1, 3) by base**-0.5 rad."""
    base = 10000.0
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    out = rotary_embedding(x, torch.tensor([1, 1]), base=base)
    a0, a1 = 1.0, base**-0.5
    want = torch.tensor(
        [[math.cos(a0), 0.0, math.sin(a0), 0.0], [0.0, math.cos(a1), 0.0, math.sin(a1)]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("shift", [1, 5, 1000, 10**6, 10**9])
def test_relative_position(shift):
    """Scores rope(q, i) . rope(k, j) are unchanged when i and j are shifted by the same amount.

    float64 angles lose ~shift * 1e-16 rad, so the bound is 1e-9 at a shift of 1e6.
    """
    torch.manual_seed(1)
    t, d = 24, 32
    q = torch.randn(t, d, dtype=torch.float64)
    k = torch.randn(t, d, dtype=torch.float64)
    pos = torch.arange(t) * 3
    scores = rotary_embedding(q, pos) @ rotary_embedding(k, pos).T
    shifted = rotary_embedding(q, pos + shift) @ rotary_embedding(k, pos + shift).T
    assert rel_err(shifted, scores) < 1e-12 + 1e-15 * shift
    # Without the shift on the keys the scores do change: the test can fail.
    unshifted_k = rotary_embedding(q, pos + shift) @ rotary_embedding(k, pos).T
    assert rel_err(unshifted_k, scores) > 1e-3


def test_score_is_toeplitz_in_position():
    """With one q and one k vector at every position, score[i, j] depends only on i - j."""
    torch.manual_seed(2)
    t, d = 40, 16
    q = torch.randn(d, dtype=torch.float64).expand(t, d)
    k = torch.randn(d, dtype=torch.float64).expand(t, d)
    for offset in (0, 10**6):
        pos = torch.arange(t) + offset
        s = rotary_embedding(q, pos) @ rotary_embedding(k, pos).T
        for diag in range(-t + 1, t):
            vals = torch.diagonal(s, diag)
            torch.testing.assert_close(vals, vals[:1].expand_as(vals), rtol=0, atol=1e-9)
    # Different offsets along the diagonal really differ (not a constant matrix).
    assert (s[0, 0] - s[5, 0]).abs() > 1e-3


def test_norm_preserved_per_pair():
    """Each channel pair (i, i + D/2) keeps its norm, hence the whole vector keeps its norm."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 50, 12, dtype=torch.float64)
    pos = torch.randint(0, 10**7, (50,))
    out = rotary_embedding(x, pos)
    pair_in = x[..., :6] ** 2 + x[..., 6:] ** 2
    pair_out = out[..., :6] ** 2 + out[..., 6:] ** 2
    torch.testing.assert_close(pair_out, pair_in, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, x)


def test_position_zero_is_identity():
    """Position 0 leaves x exactly unchanged, in float32 and float64."""
    torch.manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 5, 8, dtype=dtype)
        out = rotary_embedding(x, torch.zeros(5, dtype=torch.long))
        assert out.dtype == dtype
        assert torch.equal(out, x)


def test_composition_and_inverse():
    """rope(rope(x, a), b) == rope(x, a + b) and rope(rope(x, p), -p) == x."""
    torch.manual_seed(5)
    x = torch.randn(4, 10, 16, dtype=torch.float64)
    a = torch.randint(-1000, 1000, (10,))
    b = torch.randint(0, 10**6, (10,))
    torch.testing.assert_close(
        rotary_embedding(rotary_embedding(x, a), b), rotary_embedding(x, a + b),
        rtol=0, atol=1e-9,
    )
    torch.testing.assert_close(rotary_embedding(rotary_embedding(x, b), -b), x, rtol=0, atol=1e-9)


def test_positions_index_the_second_last_dim():
    """Leading dims are batch: each [T, D] slice is rotated by the same per-row positions."""
    torch.manual_seed(6)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    pos = torch.tensor([3, 0, 9, 1, 1, 40, 2])
    out = rotary_embedding(x, pos)
    for bi in range(2):
        for hi in range(3):
            torch.testing.assert_close(out[bi, hi], complex_rope(x[bi, hi], pos), rtol=0,
                                       atol=1e-13)
    # Row t uses positions[t]: permuting rows and positions together commutes with rope.
    perm = torch.randperm(7)
    torch.testing.assert_close(rotary_embedding(x[..., perm, :], pos[perm]), out[..., perm, :])


def test_float32_large_positions_accurate():
    """float32 input at positions ~1e6 matches float64 to ~1e-6 (angles are formed in float64)."""
    torch.manual_seed(7)
    x = torch.randn(3, 16, 64, dtype=torch.float64)
    pos = 10**6 + torch.arange(16) * 7919
    out32 = rotary_embedding(x.float(), pos)
    assert out32.dtype == torch.float32
    out64 = rotary_embedding(x, pos)
    assert (out32.double() - out64).abs().max() < 1e-5


def test_odd_dim_raises():
    """An odd head dim is rejected."""
    with pytest.raises(ValueError, match="even"):
        rotary_embedding(torch.randn(4, 7), torch.arange(4))


@pytest.mark.parametrize(
    "positions", [torch.arange(5), torch.arange(3), torch.arange(4)[None], torch.tensor(2)]
)
def test_bad_positions_shape_raises(positions):
    """positions must be exactly [T]."""
    with pytest.raises(ValueError, match="positions"):
        rotary_embedding(torch.randn(2, 4, 8), positions)
