"""``TitansConfig``: one typed, validated configuration for every variant and baseline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from titans.checks import check_bool, check_choice, check_int, check_number
from titans.layers.memory import CONV_INITS
from titans.models.blocks import MAC_MEMORY_INPUTS, VARIANTS, variant_spec
from titans.ops.memory import ACTIVATIONS

# The ablations of the paper's Table 5, as config overrides.
ABLATIONS: dict[str, dict[str, Any]] = {
    "linear_memory": {"memory_depth": 1, "memory_residual_norm": False},
    "no_momentum": {"use_momentum": False},
    "no_decay": {"use_decay": False},
    "no_conv": {"conv_kernel": 0},
    "no_persistent": {"num_persistent_tokens": 0},
}

_PAPER = {"vocab_size": 32000, "segment_len": 512, "window_size": 2048, "chunk_size": 16}
# name -> (fields, persistent tokens for the variants that have them)
PRESETS: dict[str, tuple[dict[str, Any], int]] = {
    # Tests: a few thousand parameters, runs in milliseconds.
    "tiny": ({"vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2, "num_heads": 2,
              "segment_len": 32, "window_size": 32, "chunk_size": 8}, 4),
    # Trains on a 2-core CPU in minutes.
    "small": ({"vocab_size": 8192, "hidden_size": 256, "num_hidden_layers": 4, "num_heads": 4,
               "segment_len": 128, "window_size": 256, "chunk_size": 16}, 16),
    # The paper's sizes (NeurIPS Table 5: blocks / dim / heads).
    "170M": ({**_PAPER, "hidden_size": 768, "num_hidden_layers": 12, "num_heads": 16}, 128),
    "340M": ({**_PAPER, "hidden_size": 1024, "num_hidden_layers": 24, "num_heads": 16}, 128),
    "760M": ({**_PAPER, "hidden_size": 1536, "num_hidden_layers": 24, "num_heads": 16}, 128),
    "1.3B": ({**_PAPER, "hidden_size": 2048, "num_hidden_layers": 18, "num_heads": 8}, 128),
}


@dataclass
class TitansConfig:
    """Configuration of a :class:`~titans.models.TitansLM`. Fields left ``None`` are derived on
    construction; every value is checked and a bad one raises ``ValueError``.

    Ablations (Table 5) map onto fields: linear memory = ``memory_depth=1,
    memory_residual_norm=False``; w/o momentum = ``use_momentum=False``; w/o decay =
    ``use_decay=False``; w/o conv = ``conv_kernel=0``; w/o persistent memory =
    ``num_persistent_tokens=0`` (see ``ABLATIONS``).

    What the model computes, not how it runs: compilation, the memory's activation checkpointing
    and the attention's block size are run-time knobs (:class:`titans.runtime.RuntimeConfig`),
    set on a built model by :func:`titans.runtime.apply_runtime`.
    """

    variant: str = "mac"  # a registered variant (VARIANTS): mac, mag, mal, lmm, transformer, swa
    vocab_size: int = 32000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_heads: int = 16  # attention heads
    head_dim: int | None = None  # None: hidden_size // num_heads
    intermediate_size: int | None = None  # SwiGLU width; None: 8/3 * hidden, multiple of 64
    # Attention.
    segment_len: int = 512  # MAC: tokens per segment (its attention window)
    # MAC: what its memory learns from and its gate reads, "residual" (x + y, the block's stream
    # after attention) or "attention" (the attention output y, eqs. 24-25 read literally, with
    # which MAC learned no retrieval: see MACMixer and docs/long-context.md).
    mac_memory_input: str = "residual"
    # MAL: whether the memory's output also reaches the stream directly, ``o = y + SW-Attn(y)``
    # (memory and attention as two residual layers), rather than only through the attention
    # (False: eqs. 29-31 read literally, with which MAL learned no retrieval; see MALMixer and
    # docs/long-context.md).
    mal_memory_skip: bool = True
    window_size: int = 2048  # sliding-window variants: width (tokens seen incl. itself)
    num_persistent_tokens: int | None = None  # mac/mag/mal; None: 16 (other variants: 0)
    rope_theta: float = 10000.0
    # Neural memory.
    chunk_size: int = 16  # tokens per inner mini-batch; divides segment_len for MAC
    memory_depth: int = 2  # layers of the memory MLP (1 + no residual norm = linear memory)
    memory_expansion: int = 4  # hidden width of a deep memory, times memory_head_dim
    memory_num_heads: int | None = None  # None: num_heads
    memory_head_dim: int | None = None  # None: head_dim
    memory_activation: str = "gelu"
    memory_residual_norm: bool = True  # M(x) = x + LayerNorm(mlp(x))
    memory_max_lr: float = 0.1  # step bound of a chunk's mean gradient: theta <= max_lr / chunk
    memory_max_momentum: float = 0.9  # upper bound of the momentum eta (< 1: bounded total gain)
    memory_max_decay: float = 0.1  # upper bound of the forget gate alpha
    memory_max_grad_norm: float | None = 1.0  # clip each token's inner gradient; None: off
    use_momentum: bool = True
    use_decay: bool = True
    conv_kernel: int = 4  # causal depthwise conv on q, k, v; 0 = none
    # How that conv starts: "default" (PyTorch's) or "induction" (key conv = query conv shifted
    # back one token, value conv = identity: see NeuralMemory; docs/long-context.md).
    memory_conv_init: str = "default"
    # Model.
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    # Names of the fields derived above (left None by the caller), re-derived by ``replace``.
    _derived: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._derived = frozenset(name for name in _DERIVED if getattr(self, name) is None)
        spec = variant_spec(self.variant)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads",
                     "segment_len", "window_size", "chunk_size", "memory_depth",
                     "memory_expansion"):
            check_int(name, getattr(self, name), 1)
        check_int("conv_kernel", self.conv_kernel, 0)
        for name in ("head_dim", "intermediate_size", "memory_num_heads", "memory_head_dim"):
            check_int(name, getattr(self, name), 1, optional=True)
        for name in ("memory_residual_norm", "use_momentum", "use_decay", "tie_word_embeddings",
                     "mal_memory_skip"):
            check_bool(name, getattr(self, name))
        for name in ("rope_theta", "memory_max_lr", "rms_norm_eps", "initializer_range"):
            check_number(name, getattr(self, name), "> 0", lambda x: x > 0)
        for name in ("memory_max_momentum", "memory_max_decay"):
            check_number(name, getattr(self, name), "in (0, 1]", lambda x: 0 < x <= 1)
        check_number("memory_max_grad_norm", self.memory_max_grad_norm, "> 0", lambda x: x > 0,
                     optional=True)
        check_choice("memory_activation", self.memory_activation, ACTIVATIONS)
        check_choice("memory_conv_init", self.memory_conv_init, CONV_INITS)
        check_choice("mac_memory_input", self.mac_memory_input, MAC_MEMORY_INPUTS)
        if self.memory_conv_init == "induction" and self.conv_kernel < 2:
            raise ValueError(f"memory_conv_init 'induction' shifts the key conv by one token: it "
                             f"needs conv_kernel >= 2, got {self.conv_kernel}")

        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads "
                    f"{self.num_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.intermediate_size is None:
            self.intermediate_size = -(-8 * self.hidden_size // 3 // 64) * 64
        if self.memory_num_heads is None:
            self.memory_num_heads = self.num_heads
        if self.memory_head_dim is None:
            self.memory_head_dim = self.head_dim
        if self.num_persistent_tokens is None:
            self.num_persistent_tokens = 16 if spec.persistent_tokens else 0
        check_int("num_persistent_tokens", self.num_persistent_tokens, 0)
        if self.num_persistent_tokens and not spec.persistent_tokens:
            owners = tuple(name for name, s in VARIANTS.items() if s.persistent_tokens)
            raise ValueError(
                f"variant {self.variant!r} has no persistent memory; num_persistent_tokens must "
                f"be 0 (persistent tokens belong to {owners})"
            )
        if spec.segmented and self.segment_len % self.chunk_size:
            raise ValueError(
                f"{self.variant.upper()} needs chunk_size ({self.chunk_size}) to divide "
                f"segment_len ({self.segment_len}): each segment writes whole memory chunks"
            )

    @property
    def has_memory(self) -> bool:
        return variant_spec(self.variant).has_memory

    def replace(self, **changes: Any) -> TitansConfig:
        """A copy with ``changes``; fields that were derived are derived again (so changing
        ``hidden_size`` updates ``head_dim``, which ``dataclasses.replace`` would keep)."""
        values = self.to_dict()
        for name in self._derived:
            values[name] = None
        return TitansConfig.from_dict({**values, **changes})

    def to_dict(self) -> dict[str, Any]:
        """All fields with their (resolved) values, e.g. for a JSON config file."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def model_differences(self, other: TitansConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's, other's)}`` for the fields that make the two configs different
        models. A field that only one variant reads (:data:`VARIANT_ONLY_FIELDS`) counts only
        for that variant, so e.g. an LMM saved before a MAC option's default changed is still
        the same LMM."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (v, theirs[k]) for k, v in mine.items() if v != theirs[k]
                and VARIANT_ONLY_FIELDS.get(k, self.variant) in (self.variant, other.variant)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TitansConfig:
        """Build from a mapping (e.g. parsed JSON/YAML); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TitansConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, variant: str = "mac", **overrides: Any) -> TitansConfig:
        """A preset size ("tiny", "small", "170M", "340M", "760M", "1.3B") for any variant."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
        fields, persistent = PRESETS[name]
        values: dict[str, Any] = {**fields, "variant": variant}
        if variant_spec(variant).persistent_tokens:
            values["num_persistent_tokens"] = persistent
        return cls.from_dict({**values, **overrides})


# Fields that only one variant reads.
VARIANT_ONLY_FIELDS = {"mac_memory_input": "mac", "mal_memory_skip": "mal"}

_DERIVED = ("head_dim", "intermediate_size", "memory_num_heads", "memory_head_dim",
            "num_persistent_tokens")
