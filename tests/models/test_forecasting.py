"""titans.models.forecasting: config validation, the per-window normalisation and its exact undo,
DLinear's decomposition, causality of the patch mixers, and tiny models of every mixer fitting a
small batch."""

import pytest
import torch
import torch.nn.functional as F

from titans.models.forecasting import (
    MIXERS,
    DLinear,
    ForecastConfig,
    Forecaster,
    denormalize_window,
    normalize_window,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(num_channels=3, lookback=32, horizon=8, patch_len=4, hidden_size=16,
            num_hidden_layers=1, num_heads=2, chunk_size=2, window_size=2, moving_average=5)


def series(batch, length, channels, seed=0):
    """Smooth multichannel series with an offset and a scale of their own: [B, T, C]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)[None, :, None]
    phase = torch.rand(batch, 1, channels, generator=g) * 6.28
    period = 6 + 10 * torch.rand(1, 1, channels, generator=g)
    level = 5 * torch.randn(batch, 1, channels, generator=g)
    return level + 3 * torch.sin(2 * torch.pi * t / period + phase)


@pytest.mark.parametrize(("changes", "message"), [
    ({"mixer": "mamba"}, "mixer must be one of"),
    ({"patch_len": 5}, "patch_len 5 must divide lookback 32"),
    ({"moving_average": 4}, "moving_average must be odd"),
    ({"horizon": 0}, "horizon must be an int >= 1"),
    ({"normalize_window": 1}, "normalize_window must be a bool"),
    ({"hidden_size": 18, "num_heads": 4}, "hidden_size 18 is not divisible by num_heads 4"),
])
def test_config_is_validated_on_construction(changes, message):
    with pytest.raises(ValueError, match=message):
        ForecastConfig(**{**TINY, **changes})


def test_input_shape_is_checked():
    model = Forecaster(ForecastConfig(**TINY, mixer="dlinear"))
    with pytest.raises(ValueError, match=r"x must be \[B, 32, 3\], got \(2, 32, 4\)"):
        model(torch.zeros(2, 32, 4))


def test_window_normalisation_is_undone_exactly():
    x = series(4, 32, 3).double()
    z, mean, std = normalize_window(x, 1e-5)
    assert torch.allclose(z.mean(1), torch.zeros(4, 3, dtype=torch.double), atol=1e-12)
    assert torch.allclose(denormalize_window(z, mean, std), x, atol=1e-12)


@pytest.mark.parametrize("mixer", MIXERS)
def test_forecasts_follow_a_shift_and_scale_of_the_input(mixer):
    """With window normalisation, f(a x + b) = a f(x) + b: the level and scale of a window
    reach the forecast only through its own statistics."""
    torch.manual_seed(0)
    model = Forecaster(ForecastConfig(**TINY, mixer=mixer, norm_eps=1e-12)).double().eval()
    x = series(2, 32, 3).double()
    with torch.no_grad():
        y, moved = model(x), model(7.0 * x - 40.0)
    assert torch.allclose(moved, 7.0 * y - 40.0, atol=1e-6)
    plain = Forecaster(ForecastConfig(**TINY, mixer=mixer, normalize_window=False)).double()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(7.0 * x - 40.0), 7.0 * plain(x) - 40.0, atol=1e-3)


def test_dlinear_splits_a_window_into_trend_and_seasonal_parts():
    core = DLinear(ForecastConfig(**TINY, mixer="dlinear"))
    x = series(2, 32, 3)
    seasonal, trend = core.decompose(x)
    assert torch.allclose(seasonal + trend, x.transpose(1, 2), atol=1e-6)
    ramp = torch.arange(32.0)[None, :, None].expand(1, 32, 3)
    seasonal, trend = core.decompose(ramp)
    # A moving average of a line is the line, away from the ends (which repeat the end rows).
    assert torch.allclose(trend[:, :, 2:-2], ramp.transpose(1, 2)[:, :, 2:-2])
    assert torch.allclose(trend[0, 0, :2], torch.tensor([0.6, 1.2]))


@pytest.mark.parametrize("mixer", ["memory", "attention", "swa"])
def test_a_patch_token_sees_no_later_patch(mixer):
    torch.manual_seed(0)
    model = Forecaster(ForecastConfig(**{**TINY, "num_hidden_layers": 2}, mixer=mixer)).eval()
    x = series(2, 32, 3)
    later = x.clone()
    later[:, 20:] += torch.randn(2, 12, 3)  # patches 5.. (rows 20..31) change
    with torch.no_grad():
        a, b = model.core.encode(x), model.core.encode(later)
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("mixer", ["memory", "attention", "swa"])
def test_channel_independence_keeps_each_channels_forecast_to_itself(mixer):
    torch.manual_seed(0)
    x = series(2, 32, 3)
    other = x.clone()
    other[:, :, 1] += torch.randn(2, 32)  # only channel 1 changes
    for independent in (True, False):
        model = Forecaster(ForecastConfig(**TINY, mixer=mixer, channel_independent=independent))
        with torch.no_grad():
            a, b = model(x), model(other)
        kept = torch.equal(a[:, :, [0, 2]], b[:, :, [0, 2]])
        assert kept == independent
        assert not torch.allclose(a[:, :, 1], b[:, :, 1])


@pytest.mark.slow
@pytest.mark.parametrize("mixer", MIXERS)
def test_a_tiny_model_fits_a_small_batch(mixer):
    torch.manual_seed(0)
    model = Forecaster(ForecastConfig(**TINY, mixer=mixer, channel_independent=mixer == "swa"))
    full = series(16, 40, 3, seed=1)
    full = full + 0.3 * torch.randn(full.shape, generator=torch.Generator().manual_seed(2))
    x, y = full[:, :32], full[:, 32:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = F.mse_loss(model(x), y).item()
    for _ in range(150):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02 * first, (first, loss.item())
