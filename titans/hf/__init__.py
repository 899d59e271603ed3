"""Hugging Face ``transformers`` integration (the ``hf`` extra: ``pip install -e ".[hf]"``).

Importing this package registers the ``titans`` model type with ``AutoConfig``, ``AutoModel``
and ``AutoModelForCausalLM``; ``titans export`` (:func:`export_run`) turns a training run into a
directory those load::

    import titans.hf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported/mac")
    tokenizer = AutoTokenizer.from_pretrained("exported/mac")

This is the only package of the library that imports ``transformers``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from titans.hf.configuration_titans import TitansHFConfig
from titans.hf.export import export_model, export_run, load_pretrained, wrap
from titans.hf.modeling_titans import (
    TitansCache,
    TitansForCausalLM,
    TitansModel,
    TitansPreTrainedModel,
)

AutoConfig.register(TitansHFConfig.model_type, TitansHFConfig, exist_ok=True)
AutoModel.register(TitansHFConfig, TitansModel, exist_ok=True)
AutoModelForCausalLM.register(TitansHFConfig, TitansForCausalLM, exist_ok=True)

__all__ = [
    "TitansCache", "TitansForCausalLM", "TitansHFConfig", "TitansModel", "TitansPreTrainedModel",
    "export_model", "export_run", "load_pretrained", "wrap",
]
