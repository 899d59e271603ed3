"""Long-term time-series forecasting (paper §5.6, Table 3): the neural memory as the sequence
mixer of a Simba-style forecaster, with attention, sliding-window attention and DLinear as the
baselines of the same code.

The paper takes the Simba framework (Patro & Agneeswaran 2024) and replaces its Mamba with the
neural memory; it states nothing else. Here (choices in docs/timeseries.md):

* each input window is normalised per channel (RevIN-style, without the affine part): minus its
  mean, over its std; the forecast is mapped back with the same statistics;
* the window's ``lookback`` rows are cut into ``lookback / patch_len`` non-overlapping patches; a
  token is one patch of *all* channels, embedded linearly (channel mixing in the embedding), or
  with ``channel_independent`` one patch of one channel, every channel a sequence of its own
  through the same weights (PatchTST's channel independence);
* ``num_hidden_layers`` Simba-like blocks ``x + mixer(norm(x))``, ``x + MLP(norm(x))`` — the
  library's :class:`~titans.models.blocks.TitansBlock`, whose token mixer is the neural memory
  (``lmm``), full causal attention (``transformer``) or SWA (``swa``) and whose channel-mixing
  MLP is SwiGLU (Simba's EinFFT is not reproduced);
* a linear head from the final-normed tokens (flattened) to ``horizon x channels``.

``dlinear`` (Zeng et al. 2023) splits the window into a moving-average trend and the seasonal
rest and maps each with one linear layer over time, shared by the channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from titans.checks import check_bool, check_choice, check_int, check_number
from titans.layers.norm import RMSNorm
from titans.models.blocks import TitansBlock
from titans.models.config import TitansConfig

# The forecaster's token mixers, and the library variant each one runs.
MIXER_VARIANTS = {"memory": "lmm", "attention": "transformer", "swa": "swa"}
MIXERS = (*MIXER_VARIANTS, "dlinear")


@dataclass
class ForecastConfig:
    """A forecaster of ``horizon`` rows from ``lookback`` rows of ``num_channels`` channels.

    Sizes count patches for the sequence mixers: ``chunk_size`` patches per inner mini-batch of
    the memory, ``window_size`` patches seen by SWA. The memory's other settings (deep memory,
    momentum, decay, conv) are the library's defaults (:class:`TitansConfig`).
    """

    mixer: str = "memory"
    num_channels: int = 1
    lookback: int = 96
    horizon: int = 96
    patch_len: int = 8
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_heads: int = 4
    chunk_size: int = 4
    memory_depth: int = 2
    window_size: int = 4
    moving_average: int = 25  # DLinear: the trend's moving-average width (odd)
    normalize_window: bool = True
    channel_independent: bool = False  # one sequence per channel, shared weights
    norm_eps: float = 1e-5  # added to a window's variance (a flat window has std 0)

    def __post_init__(self) -> None:
        check_choice("mixer", self.mixer, MIXERS)
        for name in ("num_channels", "lookback", "horizon", "patch_len", "hidden_size",
                     "num_hidden_layers", "num_heads", "chunk_size", "memory_depth",
                     "window_size", "moving_average"):
            check_int(name, getattr(self, name), 1)
        for name in ("normalize_window", "channel_independent"):
            check_bool(name, getattr(self, name))
        check_number("norm_eps", self.norm_eps, "> 0", lambda x: x > 0)
        if self.lookback % self.patch_len:
            raise ValueError(f"patch_len {self.patch_len} must divide lookback {self.lookback}")
        if self.moving_average % 2 == 0:
            raise ValueError(f"moving_average must be odd (a centred average), got "
                             f"{self.moving_average}")
        if self.mixer != "dlinear":
            self.backbone_config()  # the block settings checked now, by TitansConfig's rules

    @property
    def num_patches(self) -> int:
        return self.lookback // self.patch_len

    @property
    def token_channels(self) -> int:
        """Channels in one token (and in one sequence's forecast)."""
        return 1 if self.channel_independent else self.num_channels

    def backbone_config(self) -> TitansConfig:
        """The TitansConfig of the blocks (its vocabulary is unused: inputs are patches)."""
        return TitansConfig(
            variant=MIXER_VARIANTS[self.mixer], vocab_size=1, hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers, num_heads=self.num_heads,
            chunk_size=self.chunk_size, memory_depth=self.memory_depth,
            window_size=self.window_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize_window(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """x [B, L, C] -> ((x - mean) / std, mean [B, 1, C], std [B, 1, C]) over each window's
    rows, with ``std = sqrt(var + eps)``."""
    mean = x.mean(1, keepdim=True)
    std = (x.var(1, keepdim=True, unbiased=False) + eps).sqrt()
    return (x - mean) / std, mean, std


def denormalize_window(y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """The inverse of :func:`normalize_window` on a forecast y [B, H, C]."""
    return y * std + mean


class DLinear(nn.Module):
    """x [B, L, C] -> Linear_s(seasonal) + Linear_t(trend) [B, H, C], the trend a centred
    moving average with the ends repeated, the linear maps over time shared by the channels."""

    def __init__(self, config: ForecastConfig) -> None:
        super().__init__()
        self.kernel = config.moving_average
        self.seasonal = nn.Linear(config.lookback, config.horizon)
        self.trend = nn.Linear(config.lookback, config.horizon)

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, L, C] -> (seasonal, trend), both [B, C, L]."""
        half = (self.kernel - 1) // 2
        series = x.transpose(1, 2)  # [B, C, L]
        padded = F.pad(series, (half, half), mode="replicate")
        trend = F.avg_pool1d(padded, self.kernel, stride=1)
        return series - trend, trend

    def forward(self, x: Tensor) -> Tensor:
        seasonal, trend = self.decompose(x)
        return (self.seasonal(seasonal) + self.trend(trend)).transpose(1, 2)


class PatchMixer(nn.Module):
    """x [B, L, C] -> [B, H, C]: patch tokens [B, L / patch_len, hidden] (channel independent:
    [B * C, L / patch_len, hidden]) through the Titans blocks of the configured mixer, then a
    linear head on the flattened tokens."""

    def __init__(self, config: ForecastConfig) -> None:
        super().__init__()
        backbone = config.backbone_config()
        self.patch_len, self.horizon = config.patch_len, config.horizon
        self.channel_independent = config.channel_independent
        self.embed = nn.Linear(config.patch_len * config.token_channels, config.hidden_size)
        self.layers = nn.ModuleList(TitansBlock(backbone)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=backbone.rms_norm_eps)
        self.head = nn.Linear(config.num_patches * config.hidden_size,
                              config.horizon * config.token_channels)

    def _sequences(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> the sequences the blocks run on: itself, or channel independent
        [B * C, L, 1]."""
        if not self.channel_independent:
            return x
        return x.transpose(1, 2).reshape(-1, x.shape[1], 1)

    def encode(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> final-normed tokens [B, P, hidden] ([B * C, P, hidden] channel
        independent); token p has seen patches <= p only (the mixers are causal)."""
        x = self._sequences(x)
        b, length, c = x.shape
        tokens = self.embed(x.reshape(b, length // self.patch_len, self.patch_len * c))
        for layer in self.layers:
            tokens, _ = layer(tokens, 0, layer.init_state(b))
        return self.norm(tokens)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        y = self.head(self.encode(x).flatten(1))  # [B, H * C] or [B * C, H]
        if self.channel_independent:
            return y.view(b, c, self.horizon).transpose(1, 2)
        return y.view(b, self.horizon, c)


class Forecaster(nn.Module):
    """The configured forecaster: x [B, lookback, C] -> forecast [B, horizon, C], with the
    per-window normalisation around the core model when ``normalize_window``."""

    def __init__(self, config: ForecastConfig) -> None:
        super().__init__()
        if not isinstance(config, ForecastConfig):
            raise ValueError(f"config must be a ForecastConfig, got {type(config).__name__}")
        self.config = config
        self.core = DLinear(config) if config.mixer == "dlinear" else PatchMixer(config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if x.dim() != 3 or x.shape[1:] != (cfg.lookback, cfg.num_channels):
            raise ValueError(f"x must be [B, {cfg.lookback}, {cfg.num_channels}], got "
                             f"{tuple(x.shape)}")
        if not cfg.normalize_window:
            return self.core(x)
        x, mean, std = normalize_window(x, cfg.norm_eps)
        return denormalize_window(self.core(x), mean, std)
