"""Tags that modules put on their parameters and sublayers for the model's training policy, so
that the policy does not depend on parameter names.

- No weight decay: AdamW decays the matrices that map activations to activations. Vectors
  (biases, norm gains) never decay and need no tag; a module tags the matrices that are values
  rather than maps (embeddings, persistent tokens, a memory's initial weights).
- Residual projections: the last linear map of a sublayer, whose output a pre-norm block adds to
  the residual stream; GPT-2 initialisation scales these by 1/sqrt(2 * layers).

A tag is an attribute of the parameter or module object (``_no_weight_decay``, as in
flash-linear-attention, and ``_residual_projection``): it follows ``.to()``, state-dict loading,
pickling, ``torch.compile`` and DDP, which keep those objects, but not ``copy.deepcopy`` or
``to_empty`` from the meta device, which make new parameter objects. Read the tags of the model
that was built.
"""

from __future__ import annotations

from torch import Tensor, nn


def mark_no_weight_decay(*params: nn.Parameter) -> None:
    """Exempt ``params`` (matrices that are values, not maps) from weight decay."""
    for param in params:
        param._no_weight_decay = True


def no_weight_decay(param: Tensor) -> bool:
    """Whether the optimizer must not decay ``param``: a vector (ndim < 2) or a tagged value."""
    return param.ndim < 2 or getattr(param, "_no_weight_decay", False)


def mark_residual_projection(linear: nn.Linear) -> None:
    """Tag ``linear`` as its sublayer's output projection into the residual stream."""
    linear._residual_projection = True


def is_residual_projection(module: nn.Module) -> bool:
    """Whether ``module`` is a linear map tagged by :func:`mark_residual_projection`."""
    return isinstance(module, nn.Linear) and getattr(module, "_residual_projection", False)
