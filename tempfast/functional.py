"""Public ops: temperature-scaled softmax, log-softmax, cross-entropy and the fused linear head.

``T`` (``temperature``) divides the logits before the softmax. It is a Python number, a 0-dim
tensor, or one value per row (the shape of the logits without their class dimension for
cross-entropy, of ``x`` without ``dim`` for softmax). A tensor that requires grad gets its
gradient in the same pass. On CUDA tensors the ops run fused Triton kernels; on CPU tensors a
chunked PyTorch path (see :mod:`tempfast.backend`).

Layout: ``cross_entropy`` takes torch's (classes at dim 1 of ``(N, C, d1, ...)``), or
``class_dim=-1`` for class-last logits; ``linear_cross_entropy`` takes features last
(``(*, H)``, as ``F.linear``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _checks, backend, parallel
from .ops import torch_impl
from .ops.autograd_utils import is_eager
from .ops.cross_entropy import CrossEntropyInplace, FusedCrossEntropy, cross_entropy_2d
from .ops.linear_cross_entropy import default_chunk_rows, linear_cross_entropy_2d
from .ops.softmax import Softmax, softmax_2d


def _softmax(x: Tensor, temperature: float | Tensor, dim: int, log: bool) -> Tensor:
    _checks.check_floating("x", x)
    if x.dim() == 0:
        x_1d = x.reshape(1)
        return _softmax(x_1d, temperature, 0, log).reshape(())
    dim = _checks.check_dim(dim, x.dim())
    moved = x.movedim(dim, -1) if dim != x.dim() - 1 else x
    num_classes = moved.shape[-1]
    t, t_value = _temperature(temperature, moved.shape[:-1], x)
    if x.numel() == 0:  # nothing to normalise (as torch: an empty result of x's shape)
        if t is None:
            return x.clone()
        _checks.check_temperature_values(t.detach())
        return x.clone() + t.sum().to(x.dtype) * 0 if t.requires_grad else x.clone()
    x_2d = moved if moved.dim() == 2 else moved.reshape(-1, num_classes)
    learnable = t is not None and t.requires_grad and torch.is_grad_enabled()
    if is_eager(x_2d) and _small_on_cpu(x_2d, learnable):
        y = torch_impl.small_softmax(x_2d, t if t is not None else t_value, log)
    elif is_eager(x_2d):
        y = Softmax.apply(x_2d, t, t_value, log)
    else:
        y = softmax_2d(x_2d, _tensor_t(t, t_value, x), log)
    if y.shape != moved.shape:
        y = y.reshape(moved.shape)
    return y.movedim(-1, dim) if moved is not x else y


def softmax(x: Tensor, temperature: float | Tensor = 1.0, dim: int = -1) -> Tensor:
    """``torch.softmax(x / T, dim)``, fused.

    Args:
        x: floating tensor of any shape (fp32, fp16, bf16; fp64 runs the PyTorch path).
        temperature: ``T > 0``; a number, 0-dim tensor, or one value per row.
        dim: the dimension normalised over.

    Returns:
        a tensor shaped and typed like ``x``. Gradients: ``dx = y * (dy - sum(dy * y)) / T``,
        ``dT = -sum(dx * x) / T`` per row.
    """
    return _softmax(x, temperature, dim, log=False)


def log_softmax(x: Tensor, temperature: float | Tensor = 1.0, dim: int = -1) -> Tensor:
    """``torch.log_softmax(x / T, dim)``, fused. Arguments as :func:`softmax`.

    Gradients: ``dx = (dy - exp(y) * sum(dy)) / T``, ``dT = -sum(dx * x) / T`` per row.
    """
    return _softmax(x, temperature, dim, log=True)


def _check_target(target: Tensor, logits: Tensor, class_dim: int, layout_given: bool) -> bool:
    """Validate ``target`` against ``logits`` (classes at ``class_dim``); True for probability
    targets, False for class indices."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    rows_shape = logits.shape[:class_dim] + logits.shape[class_dim + 1:]
    if target.shape == logits.shape and target.dtype.is_floating_point:
        return True
    if target.shape == rows_shape:
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(
                f"target: class-index targets of shape {tuple(target.shape)} must be an integer "
                f"tensor, got {target.dtype} (probability targets have the logits' shape)"
            )
        return False
    hint = ""
    if not layout_given and logits.dim() >= 3 and target.shape == logits.shape[:-1]:
        hint = ("; the classes are at dim 1, as in torch: for class-last logits such as "
                "(B, S, C) pass class_dim=-1")
    raise ValueError(
        f"target: expected shape {tuple(rows_shape)} (class indices) or {tuple(logits.shape)} "
        f"(probabilities), got {tuple(target.shape)}{hint}"
    )


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    class_dim: int | None = None,
    inplace_backward: bool = False,
    process_group=None,
    start: int | None = None,
) -> Tensor:
    """``F.cross_entropy(logits / T, target, ...)``, fused: torch's arguments and layout.

    Args:
        logits: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dk)`` floating tensor: the classes at
            dim 1 (dim 0 for one example), as in ``F.cross_entropy``. Class-last logits such as
            a language model's ``(B, S, C)`` need ``class_dim=-1``.
        target: class indices of the logits' shape without the class dimension (``(N)``,
            ``()``, ``(N, d1, ..., dk)``; integer), or class probabilities of the logits' shape
            (soft labels: mixup, cutmix, distillation).
        temperature: ``T > 0``: a number, a 0-dim tensor, or one value per row (the target's
            shape for class indices). A tensor that requires grad receives
            ``dL/dT = (sum_j q_j z_j - sum_j p_j z_j) / T**2`` per row (``p = softmax(z / T)``,
            ``q`` the smoothed, weighted target distribution).
        weight: ``(C,)`` per-class weights, as in torch.
        ignore_index: class-index value whose rows contribute nothing (indices only).
        reduction: ``"mean"`` (over non-ignored rows, weighted as in torch), ``"sum"``, ``"none"``.
        label_smoothing: ``eps`` in [0, 1]; the target becomes ``(1 - eps) q + eps / C``.
        class_dim: the dimension of ``logits`` that holds the classes; ``None`` (default):
            torch's layout (dim 1, or 0 for 1-D logits). ``-1`` for class-last logits.
        inplace_backward: write the logits' gradient into ``logits`` during the forward pass, so
            no ``N x C`` gradient buffer is allocated. **The logits are overwritten**: do not
            read them after this call. Needs logits viewable as ``(rows, C)`` with unit stride
            along the classes (2-D, or class-last) that are not a leaf (a layer's output, not a
            parameter or input).
        process_group: a ``torch.distributed`` group whose ranks share the classes: the logits
            (and probability targets) are this rank's class range, ``target`` holds global class
            indices, ``weight`` all ``C`` class weights (class-parallel: see
            :mod:`tempfast.parallel`).
        start: with ``process_group``, this rank's first class (optional: learned once from the
            ranks' widths).

    Returns:
        fp32 loss: a scalar, or the target's shape (the logits' without the class dimension)
        for ``reduction="none"``.

    A class index outside ``[0, C)`` that is not ``ignore_index`` raises ``ValueError`` for CPU
    tensors; on CUDA (no host synchronisation) that row's loss and gradient are NaN.
    """
    if process_group is not None:
        if inplace_backward:
            raise ValueError("inplace_backward: not supported with process_group")
        return parallel.cross_entropy(logits, target, temperature, process_group=process_group,
                                      start=start, weight=weight, ignore_index=ignore_index,
                                      reduction=reduction, label_smoothing=label_smoothing,
                                      class_dim=class_dim)
    if start is not None:
        raise ValueError("start: only meaningful with process_group (class-parallel logits)")
    if weight is None and class_dim is None and not inplace_backward:
        loss = _small_cpu_call(logits, target, temperature, ignore_index, reduction,
                               label_smoothing)
        if loss is not None:
            return loss
    _checks.check_floating("logits", logits)
    if logits.dim() == 0:
        raise ValueError("logits: expected shape (N, C), (C,) or (N, C, d1, ...), got a 0-dim "
                         "tensor")
    cdim = _checks.class_dim_of(class_dim, logits.dim())
    num_classes = logits.shape[cdim]
    if num_classes == 0:
        raise ValueError(f"logits: the class dimension (dim {cdim}) is empty")
    probs = _check_target(target, logits, cdim, class_dim is not None)
    _checks.check_reduction(reduction)
    eps = _checks.check_label_smoothing(label_smoothing)
    ignore_index = _checks.check_ignore_index(ignore_index)
    _checks.check_weight(weight, num_classes)
    _checks.check_same_device(logits=logits, target=target, weight=weight)
    if probs and ignore_index != -100:
        raise ValueError("ignore_index: not supported with probability targets (as in torch)")
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("weight: the class weights cannot be differentiated (as in torch); "
                         "pass weight.detach()")
    leaf = logits.is_leaf  # before movedim: its view is never a leaf
    if cdim != logits.dim() - 1:
        logits = logits.movedim(cdim, -1)
        if probs:
            target = target.movedim(cdim, -1)
    rows_shape = logits.shape[:-1]
    t, t_value = _temperature(temperature, rows_shape, logits)

    logits_2d = logits if logits.dim() == 2 else logits.reshape(-1, num_classes)
    if probs:
        target_2d = target if target.dim() == 2 else target.reshape(-1, num_classes)
    else:
        target_2d = target if target.dim() == 1 else target.reshape(-1)
        if target_2d.dtype != torch.int64:
            target_2d = target_2d.long()
    grad_on = torch.is_grad_enabled()
    needs_grad = grad_on and logits.requires_grad
    target_grad = grad_on and probs and target.requires_grad
    compute_dt = grad_on and t is not None and t.requires_grad
    eager = is_eager(logits_2d)

    if inplace_backward and needs_grad:
        logits_view = _inplace_view(logits, num_classes, leaf, target_grad)
        if eager and reduction != "none" and logits_view.shape[0]:
            loss = FusedCrossEntropy.apply(logits_view, target_2d, t, t_value, weight,
                                           ignore_index, eps, reduction, compute_dt, True)
        else:
            loss = CrossEntropyInplace.apply(logits_view, target_2d, _tensor_t(t, t_value, logits),
                                             weight, ignore_index, eps, reduction, compute_dt)
    elif eager and _small_on_cpu(logits_2d, compute_dt):
        loss = _small_cross_entropy(logits_2d, target_2d, t if t is not None else t_value,
                                    weight, ignore_index, reduction, eps)
    elif eager and reduction != "none" and not target_grad and logits_2d.shape[0]:
        loss = FusedCrossEntropy.apply(logits_2d, target_2d, t, t_value, weight, ignore_index,
                                       eps, reduction, compute_dt, False)
    else:
        fused = needs_grad and reduction != "none" and not target_grad
        loss = cross_entropy_2d(logits_2d, target_2d, _tensor_t(t, t_value, logits), weight,
                                ignore_index, eps, reduction, fused, compute_dt)[0]
    return loss.reshape(rows_shape) if reduction == "none" else loss


SMALL_CPU_ELEMENTS = 1 << 16  # CPU calls up to this size compose stock aten ops


def _temperature(temperature: float | Tensor, rows_shape: torch.Size,
                 logits: Tensor) -> tuple[Tensor | None, float]:
    """``(None, T)`` for a Python number (checked here, passed to the kernels by value), else
    ``(t, 0.0)`` with ``t`` the ``(1,)`` or ``(N,)`` accumulation-dtype tensor of
    :func:`tempfast._checks.temperature_rows` (a one-value tensor of that dtype as given)."""
    if isinstance(temperature, float | int) and not isinstance(temperature, bool):
        value = float(temperature)
        if not value > 0.0 or value == float("inf"):
            raise ValueError(f"temperature: must be finite and > 0, got {value}")
        return None, value
    dtype = _checks.accumulation_dtype(logits.dtype)
    if (isinstance(temperature, Tensor) and temperature.dtype == dtype
            and temperature.device == logits.device and temperature.dim() <= 1
            and temperature.numel() == 1):
        return temperature, 0.0  # one value, as it is (0-dim or (1,)): no reshape, none back
    return _checks.temperature_rows(temperature, rows_shape, logits.device, dtype), 0.0


def _tensor_t(t: Tensor | None, t_value: float, logits: Tensor) -> Tensor:
    """The temperature as the ops' ``(1,)`` tensor (a Python number materialised)."""
    if t is not None:
        return t
    return torch.full((1,), t_value, dtype=_checks.accumulation_dtype(logits.dtype),
                      device=logits.device)


def _inplace_view(logits: Tensor, num_classes: int, leaf: bool, target_grad: bool) -> Tensor:
    if leaf:
        raise ValueError("inplace_backward: logits is a leaf tensor that requires grad; "
                         "overwriting it would corrupt it and its .grad (torch refuses "
                         "in-place changes to such leaves): pass a layer's output")
    if target_grad:
        raise ValueError("inplace_backward: a probability target that requires grad needs "
                         "the logits, which the in-place mode overwrites")
    try:
        logits_view = logits.view(-1, num_classes)
    except RuntimeError:
        logits_view = None
    if logits_view is None or logits_view.stride(-1) != 1:
        raise ValueError("inplace_backward: logits must be viewable as (rows, C) with unit "
                         "stride along the class dimension")
    return logits_view


def _small_on_cpu(logits: Tensor, compute_dt: bool) -> bool:
    """Small CPU calls whose temperature needs no gradient take the stock-aten route
    (:func:`tempfast.ops.torch_impl.small_cross_entropy`): at 10 to 1000 classes the host cost
    of a call is the cost, and it is eager PyTorch's. Larger ones keep the chunked,
    memory-bounded path."""
    return (not compute_dt and logits.device.type == "cpu"
            and logits.numel() <= SMALL_CPU_ELEMENTS
            and backend.resolve(logits.device) == "torch")


_SMALL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_SCALARS = (float, int)


def _small_cpu_call(logits, target, temperature, ignore_index, reduction,
                    label_smoothing) -> Tensor | None:
    """The common small call, checked in a few attribute reads and taken straight to the
    stock-aten route: 2-D CPU logits, int64 class indices, a Python-number temperature, no
    weight. ``None`` when the call is anything else (the full checks then run)."""
    if not (type(logits) is Tensor and type(target) is Tensor
            and type(temperature) in _SCALARS and type(ignore_index) is int
            and type(label_smoothing) in _SCALARS and reduction in _checks.REDUCTIONS
            and logits.is_cpu and target.is_cpu and logits.dim() == 2 and target.dim() == 1
            and target.dtype is torch.int64 and logits.dtype in _SMALL_DTYPES):
        return None
    n_rows, n_cols = logits.shape
    if not (target.shape[0] == n_rows and n_cols and logits.numel() <= SMALL_CPU_ELEMENTS
            and 0.0 < temperature < math.inf and 0.0 <= label_smoothing <= 1.0
            and backend.get_backend() != "triton" and is_eager(logits)):
        return None
    return _small_cross_entropy(logits, target, float(temperature), None, ignore_index,
                                reduction, float(label_smoothing))


def _small_cross_entropy(logits: Tensor, target: Tensor, temperature: float | Tensor,
                         weight: Tensor | None, ignore_index: int, reduction: str,
                         eps: float) -> Tensor:
    if isinstance(temperature, Tensor):
        _checks.check_temperature_values(temperature.detach())
    try:
        return torch_impl.small_cross_entropy(logits, target, temperature, weight,
                                              ignore_index, reduction, eps)
    except (IndexError, RuntimeError):
        if target.dim() == 1:  # torch's "Target 60 is out of bounds": say it tempfast's way
            _checks.check_class_indices(target, logits.shape[1], ignore_index)
        raise


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    temperature: float | Tensor = 1.0,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
    process_group=None,
    start: int | None = None,
) -> Tensor:
    """``F.cross_entropy((hidden @ weight.T + bias) / T, target, ...)`` without the full logits.

    Args:
        hidden: ``(*, H)`` features (``(N, H)``, or ``(B, S, H)`` for a language model).
        weight: ``(C, H)`` classifier weight, same dtype as ``hidden``.
        target: ``(*)`` integer class indices.
        bias: optional ``(C,)``.
        temperature: ``T > 0``: a number, a 0-dim tensor or one value per row (shape ``(*)``); a
            tensor that requires grad gets ``dL/dT`` as in :func:`cross_entropy`.
        ignore_index, reduction, label_smoothing: as in :func:`cross_entropy`.
        chunk_size: rows per chunk (default: about 2^26 logits per chunk). Peak extra memory is
            ``chunk_size * C`` logits + ``4 C H`` bytes (fp32 weight gradient) + ``N H``
            (hidden gradient) + ``4 C`` bytes, whatever ``N * C``.
        process_group, start: class-parallel: ``weight`` and ``bias`` are this rank's rows of
            the classifier (see :func:`tempfast.parallel.linear_cross_entropy`).

    Returns:
        fp32 loss: a scalar, or shape ``(*)`` for ``reduction="none"``. Gradients flow to
        ``hidden``, ``weight``, ``bias`` and ``temperature``; the weight and bias gradients are
        accumulated in fp32 across chunks.
    """
    if process_group is not None:
        return parallel.linear_cross_entropy(
            hidden, weight, target, bias, temperature, process_group=process_group, start=start,
            ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
            chunk_size=chunk_size)
    if start is not None:
        raise ValueError("start: only meaningful with process_group (a class-sharded weight)")
    eps, ignore_index = _checks.check_linear_head(hidden, weight, bias, target, reduction,
                                                  label_smoothing, ignore_index, chunk_size)
    num_classes = weight.shape[0]
    rows_shape = hidden.shape[:-1]
    n_rows = target.numel()
    chunk = default_chunk_rows(n_rows, num_classes) if chunk_size is None else chunk_size
    t = _checks.temperature_rows(temperature, rows_shape, hidden.device,
                                 _checks.accumulation_dtype(hidden.dtype))
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
             grad_on and bias is not None and bias.requires_grad]
    fused = needs if reduction != "none" else [False, False, False]
    loss = linear_cross_entropy_2d(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, target.reshape(-1).long(), t,
        ignore_index, eps, reduction, chunk, fused, grad_on and t.requires_grad)[0]
    return loss.reshape(rows_shape) if reduction == "none" else loss
