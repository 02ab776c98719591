"""Hugging Face ``transformers`` causal language models on tempfast's fused head, in one line.

    model = tempfast.hf.patch_causal_lm(AutoModelForCausalLM.from_pretrained(...))
    loss = model(input_ids, labels=labels).loss      # no (B, S, V) logits made

:func:`patch_causal_lm` replaces the model's ``forward`` so that a call with ``labels``
computes the next-token loss with :func:`tempfast.linear_cross_entropy` on the last hidden
state and the output embedding (``model.get_output_embeddings()``), in row chunks, instead of
making the logits and calling the model's loss; calls without ``labels`` (generation) run the
original ``forward``. The loss is the model's own: labels shifted by one (the last position
ignored), ``ignore_index`` -100, the mean over the counted tokens, or the sum over
``num_items_in_batch`` when the trainer passes it (gradient accumulation), and Gemma-2's
``final_logit_softcapping`` applied when the config has it (``softcap="auto"``). A sampling or
training temperature, a softcap and a z-loss are options. :func:`causal_lm_loss` is the same
loss as a function (for a custom training loop or ``Trainer(compute_loss_func=...)`` users who
keep the logits). ``transformers`` is imported by neither: any model with the usual layout
(``get_decoder()`` or ``.model``, ``get_output_embeddings()``) works.
"""

from __future__ import annotations

import functools
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .functional import linear_cross_entropy

IGNORE_INDEX = -100


def _softcap_of(model: nn.Module, softcap: float | str | None) -> float | None:
    if softcap == "auto":
        return getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return softcap


def _decoder(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    return decoder if decoder is not None else model.model


def causal_lm_loss(model: nn.Module, input_ids: Tensor | None = None,
                   labels: Tensor | None = None, *, temperature: float | Tensor = 1.0,
                   softcap: float | str | None = "auto", z_loss: float = 0.0,
                   num_items_in_batch: int | Tensor | None = None,
                   **model_kwargs: Any) -> tuple[Tensor, Any]:
    """``(loss, decoder outputs)``: the next-token cross-entropy of ``model`` on ``input_ids``
    (or ``inputs_embeds`` in ``model_kwargs``) against ``labels (B, S)``, through the fused
    head. ``temperature`` divides the (soft-capped) logits; ``z_loss`` adds PaLM's z-loss."""
    outputs = _decoder(model)(input_ids=input_ids, **model_kwargs)
    hidden = outputs[0]
    head = model.get_output_embeddings()
    target = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    summed = num_items_in_batch is not None
    loss = linear_cross_entropy(hidden, head.weight.to(hidden.dtype), target,
                                None if head.bias is None else head.bias.to(hidden.dtype),
                                temperature, ignore_index=IGNORE_INDEX,
                                reduction="sum" if summed else "mean",
                                softcap=_softcap_of(model, softcap), z_loss=z_loss)
    if summed:
        loss = loss / num_items_in_batch
    return loss, outputs


def patch_causal_lm(model: nn.Module, *, temperature: float | Tensor = 1.0,
                    softcap: float | str | None = "auto", z_loss: float = 0.0) -> nn.Module:
    """Make ``model(..., labels=...)`` compute its loss with the fused head (module
    docstring); returns ``model`` (patched in place; patching again replaces the options).
    The output's ``logits`` is None when the loss was computed this way."""
    original = getattr(model, "_tempfast_original_forward", None) or model.forward

    @functools.wraps(original)
    def forward(*args: Any, labels: Tensor | None = None, **kwargs: Any):
        if labels is None or args:
            return original(*args, labels=labels, **kwargs)
        kwargs.pop("logits_to_keep", None)
        kwargs.pop("return_dict", None)
        loss, outputs = causal_lm_loss(model, labels=labels, temperature=temperature,
                                       softcap=softcap, z_loss=z_loss, **kwargs)
        return _output(loss, outputs)

    model._tempfast_original_forward = original
    model.forward = forward
    return model


def _output(loss: Tensor, outputs: Any):
    """A ``CausalLMOutputWithPast`` (when transformers is there) with the loss and no logits."""
    try:
        from transformers.modeling_outputs import CausalLMOutputWithPast
    except ImportError:  # a model of the same layout outside transformers
        return {"loss": loss, "logits": None}
    return CausalLMOutputWithPast(loss=loss, logits=None,
                                  past_key_values=getattr(outputs, "past_key_values", None),
                                  hidden_states=getattr(outputs, "hidden_states", None),
                                  attentions=getattr(outputs, "attentions", None))


__all__ = ["causal_lm_loss", "patch_causal_lm"]
