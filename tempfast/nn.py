"""Modules wrapping the tempfast ops.

A learnable temperature is stored as ``log T`` (a parameter named ``log_temperature``), so it
stays positive under any optimiser step; read it back with the ``temperature`` property.

It lives in the *loss* module, so an optimiser built from ``model.parameters()`` alone never
updates it: build it from :func:`parameter_groups` (``torch.optim.SGD(parameter_groups(model,
loss_fn, weight_decay=5e-4), lr=0.1)``), or add ``loss_fn.parameters()`` yourself. A learnable
temperature that has a gradient while an optimiser takes its second step, and that is in none of
the parameter groups of the optimisers that have stepped, warns once
(``StaleTemperatureWarning``, pointing at the caller's ``step()``): no optimiser updates it.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
import weakref
from numbers import Real
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from . import _checks
from . import functional as F
from .ops.class_parallel import argmax as parallel_argmax
from .ops.contrastive.call import check_options as check_contrastive_options
from .ops.distillation.call import check_reduction as check_distillation_reduction
from .ops.linear_cross_entropy import default_chunk_rows


class StaleTemperatureWarning(UserWarning):
    """A learnable temperature receives gradients but no optimiser updates it."""


class _StaleCheck:
    """Watches learnable ``log_temperature`` parameters from a global optimiser step pre-hook
    (``torch.optim.optimizer.register_optimizer_step_pre_hook``, registered at the first
    forward pass of a learnable temperature). At a step of an optimiser that has stepped
    before (so every optimiser of a training step has stepped at least once), a watched
    parameter that received a gradient since the last optimiser step and is in no parameter
    group of any optimiser seen stepping warns once. An optimiser that holds it with a zero
    learning rate (warm-up) holds it: not stale; a temperature that gets no new gradient (an
    old module, an evaluation) is not looked at. No device synchronisation: the check reads
    the parameter's identity and a flag set by its gradient hook."""

    def __init__(self) -> None:
        self.params: WeakIdKeyDictionary = WeakIdKeyDictionary()  # param -> settled
        self.fresh: WeakIdKeyDictionary = WeakIdKeyDictionary()  # gradients since a step
        self.stepped: weakref.WeakSet = weakref.WeakSet()
        self.handle = None

    def watch(self, param: Tensor) -> None:
        if param not in self.params:
            self.params[param] = False
            param.register_post_accumulate_grad_hook(self._got_gradient)
        if self.handle is None:
            from torch.optim.optimizer import register_optimizer_step_pre_hook

            self.handle = register_optimizer_step_pre_hook(self)

    def _got_gradient(self, param: Tensor) -> None:
        if not self.params.get(param, True):
            self.fresh[param] = True

    def __call__(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        again = optimizer in self.stepped
        self.stepped.add(optimizer)
        fresh = [p for p in list(self.fresh.keys()) if not self.params.get(p, True)]
        self.fresh.clear()  # gradients count until the next step, of any optimiser
        if not again:
            return
        for param in fresh:
            self.params[param] = True  # settled: held, or reported now
            if not param.requires_grad or any(_holds(opt, param) for opt in self.stepped):
                continue
            warnings.warn(
                "a learnable temperature has a gradient but is in none of the optimisers' "
                "parameter groups: it never changes. Build the optimiser from "
                "tempfast.nn.parameter_groups(model, loss_fn, ...) or add loss_fn.parameters() "
                "(or freeze it: loss_fn.log_temperature.requires_grad_(False))",
                StaleTemperatureWarning, stacklevel=_user_stacklevel())


def _holds(optimizer: torch.optim.Optimizer, param: Tensor) -> bool:
    return any(p is param for group in optimizer.param_groups for p in group["params"])


_LIBRARY_DIRS = (str(Path(torch.__file__).parent) + os.sep, str(Path(__file__).parent) + os.sep)


def _user_stacklevel() -> int:
    """``warnings.warn``'s stacklevel from the caller of this function's caller to the first
    frame outside torch and tempfast: the user's ``optimizer.step()`` line."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


_STALE = _StaleCheck()


def parameter_groups(*modules: nn.Module, weight_decay: float = 0.0) -> list[dict]:
    """Optimiser parameter groups for a model and its loss: ``[decayed, not decayed]``.

    Weight matrices and convolution kernels (``ndim > 1``) get ``weight_decay``; biases,
    normalisation parameters and every temperature (the ``log_temperature`` of the tempfast
    modules, learnable T) get none. Pass every module that holds parameters, the loss
    included: ``torch.optim.SGD(parameter_groups(model, loss_fn, weight_decay=5e-4), lr=0.1,
    momentum=0.9)``. A parameter shared by several modules appears once; frozen parameters are
    left out.
    """
    seen: set[int] = set()
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules: expected torch.nn.Module, got {type(module).__name__}")
        temperatures = {id(m.log_temperature) for m in module.modules()
                        if isinstance(m, _Temperature)}
        for param in module.parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            target = decay if param.ndim > 1 and id(param) not in temperatures else no_decay
            target.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class _Temperature(nn.Module):
    """Holds ``T``: a fixed buffer, or a learnable ``log T`` parameter."""

    def __init__(self, temperature: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, Real | Tensor):
            raise TypeError("temperature: expected a number, got "
                            f"{type(temperature).__name__}")
        if isinstance(temperature, Tensor) and temperature.numel() != 1:
            raise ValueError("temperature: expected one value, got a tensor of shape "
                             f"{tuple(temperature.shape)}")
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature: must be finite and > 0, got {temperature}")
        self.learnable = learnable
        log_t = torch.tensor(math.log(float(temperature)))
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> Tensor:
        """The current temperature ``T = exp(log_temperature)`` (a 0-dim tensor)."""
        return self.log_temperature.exp()

    def _forward_temperature(self) -> Tensor:
        """:attr:`temperature` for a forward pass; a learnable one is watched for being in no
        optimiser (see :class:`StaleTemperatureWarning`)."""
        param = self.log_temperature
        if self.learnable and not torch.compiler.is_compiling() and param.requires_grad:
            _STALE.watch(param)
        return self.temperature

    def extra_repr(self) -> str:
        return (f"temperature={float(self.temperature.detach()):.4g}, "
                f"learnable={self.learnable}")


class TemperatureSoftmax(_Temperature):
    """``softmax(x / T, dim)`` (``log=True``: log-softmax) as a module."""

    def __init__(self, temperature: float = 1.0, dim: int = -1, learnable: bool = False,
                 log: bool = False) -> None:
        super().__init__(temperature, learnable)
        self.dim = dim
        self.log = log

    def forward(self, x: Tensor) -> Tensor:
        op = F.log_softmax if self.log else F.softmax
        return op(x, self._forward_temperature(), self.dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dim={self.dim}, log={self.log}"


class TemperatureCrossEntropyLoss(_Temperature):
    """``F.cross_entropy(logits / T, target, ...)`` as a loss module: torch's layout (classes at
    dim 1), or ``class_dim=-1`` for class-last logits such as ``(B, S, C)``.

    With ``learnable=True``, ``T`` is trained with the model (like CLIP's logit scale): its
    gradient comes from the fused kernel, ``dL/dT = (sum q z - sum p z) / T**2`` per row.

    With ``process_group``, the logits are this rank's slice of the classes (class-parallel,
    see :mod:`tempfast.ops.class_parallel`; ``start``: this rank's first class, optional).

    ``softcap``, ``z_loss`` and ``return_z_loss`` as in :func:`tempfast.cross_entropy` (with
    ``return_z_loss`` the module returns ``(loss, z_term)``).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        learnable: bool = False,
        *,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        class_dim: int | None = None,
        inplace_backward: bool = False,
        process_group=None,
        start: int | None = None,
        softcap: float | None = None,
        z_loss: float = 0.0,
        return_z_loss: bool = False,
    ) -> None:
        super().__init__(temperature, learnable)
        self.register_buffer("weight", weight)
        self.softcap = softcap
        self.z_loss = z_loss
        self.return_z_loss = return_z_loss
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.class_dim = class_dim
        self.inplace_backward = inplace_backward
        self.process_group = process_group
        self.start = start

    def forward(self, logits: Tensor, target: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        sharded = ({} if self.process_group is None else
                   {"process_group": self.process_group, "start": self.start})
        extras = {k: v for k, v in (("softcap", self.softcap), ("z_loss", self.z_loss),
                                    ("return_z_loss", self.return_z_loss)) if v}
        return F.cross_entropy(
            logits,
            target,
            self._forward_temperature(),
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            class_dim=self.class_dim,
            inplace_backward=self.inplace_backward,
            **sharded,
            **extras,
        )

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")


class LinearTemperatureCrossEntropy(_Temperature):
    """A classifier head fused with the temperature cross-entropy: ``(N, H) -> loss``.

    ``forward(hidden, target)`` returns ``F.cross_entropy((hidden @ W.T + b) / T, target)``
    computed in row chunks, so the ``N x C`` logits never exist (see
    :func:`tempfast.functional.linear_cross_entropy` for the memory bound). Logits for a few
    rows are available on request (``logits_rows=``), and :meth:`predict` returns the argmax
    class chunk by chunk, for accuracy without the full logits.

    ``accum_dtype``: the weight gradient's accumulator across chunks (as in
    :func:`tempfast.functional.linear_cross_entropy`: fp32 by default). ``softcap`` and
    ``z_loss``: as in :func:`tempfast.cross_entropy`.

    With ``process_group`` the head is class-parallel: ``num_classes`` is this rank's share
    (its rows of the weight; ranks in class order, see :mod:`tempfast.ops.class_parallel`),
    the loss and the features' gradient are those of the whole head, and :meth:`predict`
    returns global class indices.
    """

    def __init__(self, in_features: int, num_classes: int, temperature: float = 1.0,
                 learnable: bool = False, bias: bool = True, *, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0,
                 chunk_size: int | None = None, process_group=None, start: int | None = None,
                 accum_dtype: torch.dtype | None = None, softcap: float | None = None,
                 z_loss: float = 0.0, device=None, dtype=None) -> None:
        super().__init__(temperature, learnable)
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.softcap = softcap
        self.z_loss = z_loss
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.chunk_size = chunk_size
        self.accum_dtype = accum_dtype
        self.process_group = process_group
        self.start = start

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def forward(self, hidden: Tensor, target: Tensor,
                logits_rows: slice | Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """The loss; with ``logits_rows`` (a slice or index tensor over the flattened rows),
        also ``(loss, logits of those rows)``. Features in another dtype than the head (bf16
        features from autocast, say) run the head in the features' dtype, as autocast would."""
        weight, bias = self.linear.weight, self.linear.bias
        if weight.dtype != hidden.dtype:
            weight = weight.to(hidden.dtype)
            bias = bias.to(hidden.dtype) if bias is not None else None
        sharded = ({"accum_dtype": self.accum_dtype} if self.process_group is None else
                   {"process_group": self.process_group, "start": self.start})
        if self.softcap or self.z_loss:
            sharded.update(softcap=self.softcap, z_loss=self.z_loss)
        loss = F.linear_cross_entropy(
            hidden, weight, target, bias, self._forward_temperature(),
            ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, chunk_size=self.chunk_size, **sharded)
        if logits_rows is None:
            return loss
        rows = hidden.reshape(-1, hidden.shape[-1])[logits_rows]
        return loss, nn.functional.linear(rows, weight, bias)

    @torch.no_grad()
    def predict(self, hidden: Tensor) -> Tensor:
        """Argmax class of every row of ``hidden (*, H)``, shape ``(*)``, in row chunks."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        chunk = self.chunk_size or default_chunk_rows(flat.shape[0], self.linear.out_features)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        best = (torch.empty(flat.shape[0], dtype=self.linear.weight.dtype, device=flat.device)
                if self.process_group is not None else None)
        for r0 in range(0, flat.shape[0], chunk):
            logits = self.linear(flat[r0:r0 + chunk].to(self.linear.weight.dtype))
            if best is None:
                out[r0:r0 + chunk] = logits.argmax(-1)
            elif logits.shape[-1] == 0:  # a rank that holds no class
                best[r0:r0 + chunk], out[r0:r0 + chunk] = float("-inf"), 0
            else:
                best[r0:r0 + chunk], out[r0:r0 + chunk] = logits.max(-1)
        if best is not None:
            out = parallel_argmax(best, out, self.process_group, self.linear.out_features,
                                  self.start)
        return out.reshape(hidden.shape[:-1])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction!r}"


class DistillationLoss(_Temperature):
    """:func:`tempfast.distillation_loss` as a module: ``forward(student_logits,
    teacher_logits, target=None)``.

    With ``learnable=True`` the temperature is trained (``log T``, the parameter
    ``log_temperature``, as for the other modules here: :func:`parameter_groups` keeps it out
    of weight decay and a T the optimiser never updates warns); its gradient comes from the
    fused kernel. ``teacher_log_probs=True``: the teacher input is ``log softmax(t / T)``
    already (as in :func:`tempfast.distillation_loss`; not with ``learnable``).
    """

    def __init__(self, temperature: float = 1.0, alpha: float = 0.5, *,
                 reduction: str = "batchmean", ignore_index: int = -100,
                 learnable: bool = False, teacher_log_probs: bool = False) -> None:
        super().__init__(temperature, learnable)
        check_distillation_reduction(reduction)
        self.teacher_log_probs = teacher_log_probs
        self.alpha = _checks.check_fraction("alpha", alpha)
        self.reduction = reduction
        self.ignore_index = _checks.check_ignore_index(ignore_index)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor,
                target: Tensor | None = None) -> Tensor:
        t = self._forward_temperature()
        dtype = _checks.accumulation_dtype(student_logits.dtype)
        return F.distillation_loss(student_logits, teacher_logits, t if t.dtype == dtype
                                   else t.to(dtype), target=target, alpha=self.alpha,
                                   reduction=self.reduction, ignore_index=self.ignore_index,
                                   teacher_log_probs=self.teacher_log_probs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, reduction={self.reduction!r}"


class ContrastiveLoss(_Temperature):
    """:func:`tempfast.contrastive_loss` as a module with CLIP's learned temperature:
    ``forward(a, b)``.

    ``learnable=True`` (the default, as in CLIP) trains ``log T`` (the parameter
    ``log_temperature``; :func:`parameter_groups` keeps it out of weight decay). CLIP's clamp
    of the inverse temperature (its ``logit_scale``) at ``max_inverse_temperature`` applies in
    the forward pass: ``T = max(exp(log_temperature), 1 / max_inverse_temperature)``, with no
    gradient to ``log T`` while clamped (``None``: no clamp). ``process_group``: the batch
    split over ranks, as in :func:`tempfast.contrastive_loss`.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = True,
                 max_inverse_temperature: float | None = 100.0, symmetric: bool = True,
                 reduction: str = "mean", process_group=None) -> None:
        super().__init__(temperature, learnable)
        if max_inverse_temperature is not None:
            if isinstance(max_inverse_temperature, bool) or not isinstance(
                    max_inverse_temperature, Real) or not max_inverse_temperature > 0:
                raise ValueError("max_inverse_temperature: expected a number > 0 or None, got "
                                 f"{max_inverse_temperature!r}")
            max_inverse_temperature = float(max_inverse_temperature)
        check_contrastive_options(symmetric, reduction)
        self.max_inverse_temperature = max_inverse_temperature
        self.symmetric = symmetric
        self.reduction = reduction
        self.process_group = process_group

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        t = self._forward_temperature()
        if self.max_inverse_temperature is not None:
            t = t.clamp_min(1.0 / self.max_inverse_temperature)
        dtype = _checks.accumulation_dtype(a.dtype)
        return F.contrastive_loss(a, b, t if t.dtype == dtype else t.to(dtype),
                                  symmetric=self.symmetric, reduction=self.reduction,
                                  process_group=self.process_group)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, max_inverse_temperature="
                f"{self.max_inverse_temperature}, symmetric={self.symmetric}, "
                f"reduction={self.reduction!r}")
