"""The Hugging Face config of a Titans model: :class:`TitansConfig`'s fields as attributes of a
``transformers`` ``PreTrainedConfig``, so ``config.json`` of an exported model reads like any
other (``model_type: "titans"``, ``hidden_size``, ``num_hidden_layers``, ...)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from transformers import PreTrainedConfig

from titans.models.config import TitansConfig

TITANS_FIELDS = tuple(f.name for f in dataclasses.fields(TitansConfig) if f.init)


class TitansHFConfig(PreTrainedConfig):
    """Every :class:`TitansConfig` field (validated by building one: a bad value raises the same
    ``ValueError``), plus the Hugging Face attributes (``eos_token_id``, ``pad_token_id``, ...).

    The fields are declared once, by :class:`TitansConfig`; this class takes them as keyword
    arguments, so ``TitansHFConfig(variant="mag", hidden_size=256)`` and
    ``TitansHFConfig.from_titans(cfg)`` both work. ``pad_token_id`` defaults to
    ``eos_token_id``: finished rows of a batch are padded with end-of-text, as
    :meth:`TitansLM.generate` does.
    """

    model_type = "titans"
    # HF's name of the head count
    attribute_map: ClassVar[dict[str, str]] = {"num_attention_heads": "num_heads"}

    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        values = {name: kwargs.pop(name) for name in TITANS_FIELDS if name in kwargs}
        titans = TitansConfig.from_dict(values)
        for name, value in titans.to_dict().items():
            setattr(self, name, value)
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id
        super().__post_init__(**kwargs)

    @classmethod
    def from_titans(cls, config: TitansConfig, **hf: Any) -> TitansHFConfig:
        """The HF config of ``config``; ``hf``: Hugging Face attributes (e.g. ``eos_token_id``)."""
        return cls(**config.to_dict(), **hf)

    def to_titans(self) -> TitansConfig:
        """The :class:`TitansConfig` these attributes describe."""
        return TitansConfig.from_dict({name: getattr(self, name) for name in TITANS_FIELDS})
