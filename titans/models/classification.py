"""Sequence classification on a (pre-trained) :class:`~titans.models.TitansLM` backbone, as in
the paper's DNA experiments (Table 4: a pre-trained model fine-tuned per GenomicsBenchmarks
task)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from titans.checks import check_choice, check_int
from titans.models.lm import TitansLM

# "mean": the average of the final-norm hidden states over the sequence's tokens (every
# position weighs alike, whatever the mixer); "last": the hidden state of its last token, which
# has read the whole sequence (a causal model's summary, e.g. the memory after its last update).
POOLINGS = ("mean", "last")


class SequenceClassifier(nn.Module):
    """``backbone`` (any variant, e.g. a pre-trained nucleotide LM) -> pooled hidden state ->
    a linear layer to ``num_classes`` logits. The LM head is not used (tied to the embedding
    by default, it adds no parameters); every backbone weight is fine-tuned.

    Sequences of a batch may differ in length: they are right-padded (any id) and ``lengths``
    says how many tokens each has. The backbone is causal, so the padding never reaches a real
    token's hidden state, and pooling reads only the real ones: a sequence's logits are the same
    alone or padded in a batch.
    """

    def __init__(self, backbone: TitansLM, num_classes: int, pooling: str = "mean") -> None:
        super().__init__()
        if not isinstance(backbone, TitansLM):
            raise ValueError(f"backbone must be a TitansLM, got {type(backbone).__name__}")
        check_int("num_classes", num_classes, 2)
        check_choice("pooling", pooling, POOLINGS)
        self.backbone = backbone
        self.pooling = pooling
        self.num_classes = num_classes
        self.head = nn.Linear(backbone.config.hidden_size, num_classes)
        nn.init.normal_(self.head.weight, std=backbone.config.initializer_range)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """input_ids [B, T] (right-padded), lengths [B] in [1, T] (None: all T) -> logits
        [B, num_classes] (float32)."""
        batch, t_len = input_ids.shape if input_ids.dim() == 2 else (0, 0)
        if lengths is None:
            lengths = torch.full((batch,), t_len, dtype=torch.long, device=input_ids.device)
        if lengths.shape != (batch,) or (lengths.numel() and (
                int(lengths.min()) < 1 or int(lengths.max()) > t_len)):
            raise ValueError(f"lengths must be [B] = [{batch}] values in [1, {t_len}], got "
                             f"{lengths.tolist() if lengths.dim() == 1 else lengths.shape}")
        hidden, _ = self.backbone.hidden_states(input_ids)  # [B, T, H]
        lengths = lengths.to(hidden.device)
        if self.pooling == "last":
            pooled = hidden[torch.arange(batch, device=hidden.device), lengths - 1]
        else:
            mask = (torch.arange(t_len, device=hidden.device) < lengths[:, None]).to(hidden.dtype)
            pooled = (hidden * mask[..., None]).sum(1) / lengths[:, None].to(hidden.dtype)
        return self.head(pooled).float()

    def num_parameters(self) -> int:
        """Unique parameters: the backbone's and the head's."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
