"""``tempfast.hf``: a Hugging Face causal LM (tiny, random, built from a config: no download)
patched onto the fused head gives the model's own loss and gradients, with Gemma-2's logit
soft-capping, with ``num_items_in_batch``, and generation still runs the original forward.
Skipped without ``transformers`` (``pip install 'tempfast[hf]'``)."""

from __future__ import annotations

import pytest
import torch

import tempfast

from .harness import assert_close

transformers = pytest.importorskip("transformers")


def _model(kind: str):
    torch.manual_seed(0)
    common = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64}
    if kind == "gemma2":
        config = transformers.Gemma2Config(**common, head_dim=8, final_logit_softcapping=5.0,
                                           attn_implementation="eager")
        return transformers.Gemma2ForCausalLM(config)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 96, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt
    return ids, labels


def _loss_and_grads(model, **kwargs):
    model.zero_grad(set_to_none=True)
    ids, labels = _batch()
    out = model(input_ids=ids, labels=labels, **kwargs)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_patched_model_gives_its_own_loss_and_gradients(kind):
    model = _model(kind)
    own, own_grads = _loss_and_grads(model)
    tempfast.hf.patch_causal_lm(model)
    fused, fused_grads = _loss_and_grads(model)
    assert fused.logits is None
    assert_close(fused.loss, own.loss, 2e-5, "loss")
    assert own_grads.keys() == fused_grads.keys()
    for name, g in own_grads.items():
        assert_close(fused_grads[name], g, 1e-4, f"grad {name}", floor=1e-3)
    ids, _ = _batch()
    assert model(input_ids=ids).logits.shape == (2, 12, 96)  # no labels: the original forward


def test_num_items_in_batch_and_the_options_of_the_fused_loss():
    model = _model("llama")
    ids, labels = _batch()
    own = model(input_ids=ids, labels=labels, num_items_in_batch=40).loss
    loss, _ = tempfast.hf.causal_lm_loss(model, ids, labels, num_items_in_batch=40)
    assert_close(loss, own, 2e-5, "loss over num_items_in_batch")
    logits = model(input_ids=ids).logits
    target = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    expected = tempfast.reference.cross_entropy(logits.double(), target, 2.0, class_dim=-1,
                                                softcap=3.0, z_loss=1e-3)
    loss, _ = tempfast.hf.causal_lm_loss(model, ids, labels, temperature=2.0, softcap=3.0,
                                         z_loss=1e-3)
    assert_close(loss, expected, 2e-5, "loss at T = 2 with softcap and z-loss")
