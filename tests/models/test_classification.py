"""SequenceClassifier: padding never reaches a real token (causal backbone, pooling over the real
tokens only), each pooling reads what it says, bad arguments fail, and a tiny one memorises; a tiny
nucleotide LM learns its sequences (slow)."""

import pytest
import torch
import torch.nn.functional as F

from titans.models import TitansConfig, TitansLM
from titans.models.classification import SequenceClassifier

TINY = {"vocab_size": 6, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2,
        "chunk_size": 4, "segment_len": 8, "window_size": 8}


def classifier(variant, pooling, seed=0):
    torch.manual_seed(seed)
    return SequenceClassifier(TitansLM(TitansConfig(variant=variant, **TINY)), 3, pooling).eval()


@pytest.mark.parametrize("variant", ["lmm", "transformer", "mac"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_changes_nothing(variant, pooling):
    """A sequence's logits are the same alone and right-padded (with any ids) in a batch."""
    model = classifier(variant, pooling)
    gen = torch.Generator().manual_seed(1)
    short, long = torch.randint(1, 5, (1, 11), generator=gen), torch.randint(1, 5, (1, 19),
                                                                             generator=gen)
    padded = torch.cat([short, torch.randint(0, 6, (1, 8), generator=gen)], 1)
    with torch.no_grad():
        batch = model(torch.cat([padded, long]), torch.tensor([11, 19]))
        alone = torch.cat([model(short), model(long)])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
    assert batch.shape == (2, 3) and batch.dtype == torch.float32


def test_pooling_reads_what_it_says():
    """'last' reads only the last real token's hidden state (which has seen the whole
    sequence); 'mean' averages every real token's, so it moves when an early token's own
    hidden state changes even if the last token's barely does."""
    model = classifier("transformer", "last")
    ids = torch.randint(1, 5, (1, 12), generator=torch.Generator().manual_seed(2))
    hidden, _ = model.backbone.hidden_states(ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model.head(hidden[:, -1]))
        model.pooling = "mean"
        torch.testing.assert_close(model(ids), model.head(hidden.mean(1)))
        torch.testing.assert_close(model(ids, torch.tensor([5])),
                                   model.head(hidden[:, :5].mean(1)))


def test_bad_arguments():
    backbone = TitansLM(TitansConfig(variant="lmm", **TINY))
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(backbone, 2, "max")
    with pytest.raises(ValueError, match="num_classes"):
        SequenceClassifier(backbone, 1)
    with pytest.raises(ValueError, match="backbone must be a TitansLM"):
        SequenceClassifier(torch.nn.Linear(2, 2), 2)
    model = SequenceClassifier(backbone, 2)
    ids = torch.ones(2, 5, dtype=torch.long)
    for lengths in (torch.tensor([0, 5]), torch.tensor([6, 5]), torch.tensor([5])):
        with pytest.raises(ValueError, match="lengths must be"):
            model(ids, lengths)


def test_shares_the_backbone_weights():
    backbone = TitansLM(TitansConfig(variant="lmm", **TINY))
    model = SequenceClassifier(backbone, 4)
    assert model.backbone is backbone
    assert model.num_parameters() == backbone.num_parameters() + 32 * 4 + 4


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lmm", "transformer"])
def test_tiny_classifier_memorises_labels(variant):
    """Random labels of 12 random sequences of different lengths are learnt exactly."""
    model = classifier(variant, "mean").train()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 5, (12, 16), generator=gen)
    lengths = torch.randint(8, 17, (12,), generator=gen)
    labels = torch.randint(0, 3, (12,), generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(model(ids, lengths), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        assert (model.eval()(ids, lengths).argmax(-1) == labels).all()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lmm", "transformer"])
def test_tiny_nucleotide_lm_memorises_a_sequence(variant):
    """A tiny nucleotide LM learns 4 random 24-base sequences (tokenised by the DNA tokenizer)
    far below the 2 bits per base of a uniform guess (the first bases of each stay partly
    ambiguous): the pre-training objective works."""
    from titans.data.dna import NucleotideTokenizer

    rng = torch.Generator().manual_seed(5)
    bases = ["".join("ACGT"[int(i)] for i in torch.randint(0, 4, (24,), generator=rng))
             for _ in range(4)]
    ids = torch.tensor(NucleotideTokenizer().encode_batch(bases))
    torch.manual_seed(0)
    model = TitansLM(TitansConfig(variant=variant, **TINY))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model(ids, labels=ids).loss.item() < 0.4  # nats/base; uniform over ACGT: 1.39
