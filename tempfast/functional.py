"""Public ops: temperature-scaled softmax, log-softmax, cross-entropy, the fused linear head, the
distillation loss, the contrastive losses and the per-token log-probabilities and entropy.

``T`` (``temperature``) divides the logits before the softmax. It is a Python number, a 0-dim
tensor, or one value per row (the shape of the logits without their class dimension for
cross-entropy, of ``x`` without ``dim`` for softmax). A tensor that requires grad gets its
gradient in the same pass. On CUDA tensors the ops run fused Triton kernels; on CPU tensors a
chunked PyTorch path (see :mod:`tempfast.backend`).

Each op checks and normalises its arguments once (``tempfast.ops.<op>.normalise``) and runs
the route that ``tempfast.ops.<op>.route`` names (``tempfast/ops/README.md``).

Layout: ``cross_entropy`` takes torch's (classes at dim 1 of ``(N, C, d1, ...)``), or
``class_dim=-1`` for class-last logits; ``linear_cross_entropy`` takes features last
(``(*, H)``, as ``F.linear``); ``distillation_loss`` takes classes last.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import contrastive as _contrastive
from .ops import cross_entropy as _cross_entropy
from .ops import distillation as _distillation
from .ops import linear_cross_entropy as _linear
from .ops import softmax as _softmax
from .ops import token_logprobs as _token
from .ops.token_logprobs import linear as _token_linear


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
    return _softmax.run(_softmax.normalise(x, temperature, dim, log=False))


def log_softmax(x: Tensor, temperature: float | Tensor = 1.0, dim: int = -1) -> Tensor:
    """``torch.log_softmax(x / T, dim)``, fused. Arguments as :func:`softmax`.

    Gradients: ``dx = (dy - exp(y) * sum(dy)) / T``, ``dT = -sum(dx * x) / T`` per row.
    """
    return _softmax.run(_softmax.normalise(x, temperature, dim, log=True))


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
    softcap: float | None = None,
    z_loss: float = 0.0,
    return_z_loss: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``F.cross_entropy(logits / T, target, ...)``, fused: torch's arguments and layout.

    Args:
        logits: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dk)`` floating tensor: the classes at
            dim 1 (dim 0 for one example), as in ``F.cross_entropy``. Class-last logits such as
            a language model's ``(B, S, C)`` need ``class_dim=-1``.
        target: class indices of the logits' shape without the class dimension (``(N)``,
            ``()``, ``(N, d1, ..., dk)``; any integer dtype: unlike ``F.cross_entropy``, which
            takes only int64, int32 / int16 / uint8 indices are accepted and read exactly), or
            class probabilities of the logits' shape (soft labels: mixup, cutmix,
            distillation).
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
            :mod:`tempfast.ops.class_parallel`).
        start: with ``process_group``, this rank's first class (optional: learned once from the
            ranks' widths).
        softcap: ``c``: the logits become ``c * tanh(logits / c)`` before they are divided by
            ``T`` (Gemma-2's final-logit soft-capping); None for none.
        z_loss: the coefficient of the z-loss ``z_loss * lse(a / T)^2`` (PaLM), added per row
            that is not ignored: unweighted by ``weight`` and label smoothing, summed for
            ``"sum"``, averaged over those rows for ``"mean"`` (as Liger and flash-attn do);
            its gradient and dL/dT are fused with the cross-entropy's.
        return_z_loss: also return the z-term alone (reduced as the loss; for logging).

    Returns:
        fp32 loss: a scalar, or the target's shape (the logits' without the class dimension)
        for ``reduction="none"``; with ``return_z_loss`` the pair ``(loss, z_term)``, the loss
        including the z-term.

    A class index outside ``[0, C)`` that is not ``ignore_index`` raises ``ValueError`` for CPU
    tensors; on CUDA (no host synchronisation) that row's loss and gradient are NaN.
    """
    return _cross_entropy.loss(logits, target, temperature, weight, ignore_index, reduction,
                               label_smoothing, class_dim, inplace_backward, process_group, start,
                               softcap, z_loss, return_z_loss)


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
    accum_dtype: torch.dtype | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
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
        chunk_size: rows per chunk (default: a chunk of about 2^25 logits, or up to a quarter
            of the weight gradient accumulator's bytes when that is more: 2048 rows at
            H = 4096 in bf16). Peak extra memory is ``chunk_size * C`` logits + ``4 C H``
            bytes (fp32 weight gradient) + ``N H`` (hidden gradient) + ``4 C`` bytes,
            whatever ``N * C``.
        process_group, start: class-parallel: ``weight`` and ``bias`` are this rank's rows of
            the classifier (see :mod:`tempfast.ops.class_parallel`).
        accum_dtype: the weight gradient's accumulator across chunks: None (fp32; fp64 for
            fp64 inputs) or the weight's own dtype, which saves ``2 C H`` bytes for 16-bit
            weights at a precision cost that grows with the number of chunks (measured in
            kernels/README.md); not with ``process_group``.
        softcap, z_loss: as in :func:`cross_entropy` (fused in each chunk's kernel).

    Returns:
        fp32 loss: a scalar, or shape ``(*)`` for ``reduction="none"``. Gradients flow to
        ``hidden``, ``weight``, ``bias`` and ``temperature``; the weight and bias gradients are
        accumulated in fp32 across chunks unless ``accum_dtype`` says otherwise.
    """
    call = _linear.normalise(
        hidden, weight, target, bias, temperature, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, chunk_size=chunk_size,
        process_group=process_group, start=start, accum_dtype=accum_dtype, softcap=softcap,
        z_loss=z_loss)
    return _linear.run(call)


def contrastive_loss(
    a: Tensor,
    b: Tensor,
    temperature: float | Tensor = 0.07,
    *,
    symmetric: bool = True,
    reduction: str = "mean",
    process_group=None,
) -> Tensor:
    """CLIP's loss: ``s = a @ b.T / T``, ``CE(s, arange(B))``, averaged with ``CE(s.T,
    arange(B))`` when ``symmetric``, without the ``B x B`` matrix.

    Args:
        a, b: ``(B, D)`` features of the same dtype and device; row ``i`` of ``a`` matches
            row ``i`` of ``b`` (normalise them first for CLIP's cosine similarities).
        temperature: ``T > 0``, a number or a 0-dim tensor (a learnable one gets ``dL/dT``;
            CLIP's ``logit_scale`` is ``1 / T``: see :class:`tempfast.nn.ContrastiveLoss`).
        symmetric: average the two directions (CLIP); False: ``a``'s direction only.
        reduction: ``"mean"`` or ``"sum"`` over rows, or ``"none"``: ``(B,)``, row ``i``'s
            loss (the mean of its two directions when symmetric).
        process_group: a ``torch.distributed`` group over which the batch is split: each rank
            passes its own rows (``B_r`` of ``a`` and of ``b``, uneven counts and empty ranks
            allowed, in rank order) and gets the loss over the global batch (the same value on
            every rank; ``"none"``: its own rows'); the gradients of its rows and of ``T``
            equal the single-process gradients of the global loss. One all-gather of each
            feature tensor, no global ``B x B`` on any rank. Under DDP, which averages
            parameter gradients, see the README's "Contrastive losses over ranks".

    Returns:
        fp32 loss (fp64 for fp64 features). Gradients flow to ``a``, ``b`` and ``temperature``
        exactly; the similarities exist a chunk of rows at a time (one process: the fused
        linear head's chunks, :func:`linear_cross_entropy`).
    """
    return _contrastive.run(_contrastive.normalise(a, b, temperature, symmetric, reduction,
                                                   process_group))


def nt_xent_loss(
    z1: Tensor,
    z2: Tensor,
    temperature: float | Tensor = 0.5,
    *,
    reduction: str = "mean",
    process_group=None,
) -> Tensor:
    """SimCLR's NT-Xent over the ``2B`` views ``z = cat(z1, z2)``: with ``s = z @ z.T / T``,
    view ``i``'s positive is its other view and its negatives the other ``2B - 2`` (itself
    excluded): ``l_i = logsumexp_{j != i} s_ij - s_i,pos(i)``.

    Args:
        z1, z2: ``(B, D)`` features of the two views, row ``i`` of each from example ``i``
            (normalise them first for SimCLR's cosine similarities).
        temperature: ``T > 0``, a number or a 0-dim tensor (a learnable one gets ``dL/dT``).
        reduction: ``"mean"`` or ``"sum"`` over the ``2B`` views, or ``"none"``: ``(2B,)``.
        process_group: the batch split over a ``torch.distributed`` group, as in
            :func:`contrastive_loss`: each rank passes its ``B_r`` examples' two views and
            gets the loss over the global ``2B`` views (``"none"``: its own ``2 B_r``, first
            views then second).

    Returns:
        fp32 loss (fp64 for fp64 features), exact gradients for ``z1``, ``z2`` and
        ``temperature``; the ``2B x 2B`` similarities exist a chunk of rows at a time (made
        again in the backward pass).
    """
    return _contrastive.run_nt_xent(_contrastive.normalise_nt_xent(z1, z2, temperature,
                                                                   reduction, process_group))


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    target: Tensor | None = None,
    alpha: float = 0.5,
    reduction: str = "batchmean",
    ignore_index: int = -100,
    teacher_log_probs: bool = False,
) -> Tensor:
    """``F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
    reduction) * T**2``, fused; with ``target``, ``alpha * that + (1 - alpha) * CE(s, target)``.
    One difference from ``F.kl_div``: ``reduction="none"`` returns one value per row (the row's
    KL summed over its classes), shape ``(*,)``, not one per element.

    Args:
        student_logits: ``(*, C)`` floating tensor (classes last).
        teacher_logits: the same shape and dtype. It receives a gradient only if it requires
            grad (``d/dt = T p_t (log p_t - log p_s - KL)`` per row).
        temperature: ``T > 0``: a number, a 0-dim tensor, or one value per row (shape ``(*,)``);
            ``T**2`` multiplies each row's KL. A tensor that requires grad receives
            ``dL/dT = 2 T KL + T (-Cov_pt(a, a - b) + E_pt[b] - E_ps[b])`` per row
            (``a = t / T``, ``b = s / T``).
        target: optional class indices ``(*,)`` (integer): adds the hard-label cross-entropy of
            the student at ``T = 1``; rows equal to ``ignore_index`` contribute no CE term.
        alpha: the KD part's weight in ``[0, 1]``, used only with ``target`` (without it the
            loss is the KD term alone, whatever ``alpha``).
        reduction: ``"batchmean"`` (KD: sum / rows, as ``F.kl_div``), ``"mean"`` (KD: sum /
            (rows * C), as ``F.kl_div``'s ``"mean"``), ``"sum"``, or ``"none"`` (per row, shape
            ``(*,)``). The CE part is reduced like ``F.cross_entropy``: for ``"batchmean"`` and
            ``"mean"``, its sum over the rows not ignored divided by their number (NaN when all
            are ignored, as in torch); ``"sum"`` its sum; ``"none"`` per row (0 when ignored).
        ignore_index: the class-index value whose rows have no CE term.
        teacher_log_probs: the teacher input is already the full-vocabulary
            ``log softmax(t / T)`` (stored by an inference server, say): it is not divided by
            ``T`` again, and a ``temperature`` that requires grad is refused (the stored
            log-probabilities belong to one fixed T). Costs one elementwise pass over it.

    Returns:
        the fp32 loss (fp64 for fp64 logits): a scalar, or ``(*,)`` for ``"none"``. No rows:
        ``"batchmean"`` / ``"mean"`` give NaN (0 / 0, as ``F.kl_div``), ``"sum"`` 0.

    Argument problems raise a one-line ``ValueError`` (``TypeError`` for a wrong type or dtype)
    that names the argument; a temperature that is not finite and positive, or a class index
    outside ``[0, C)`` that is not ``ignore_index``, raises for CPU tensors (on CUDA, with no
    host synchronisation, the row is NaN instead).
    """
    call = _distillation.normalise(student_logits, teacher_logits, temperature, target=target,
                                   alpha=alpha, reduction=reduction, ignore_index=ignore_index,
                                   teacher_log_probs=teacher_log_probs)
    return _distillation.run(call)


def token_logprobs(
    logits: Tensor,
    target: Tensor,
    temperature: float | Tensor = 1.0,
    *,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token log-probabilities (and entropy) at a temperature, as RL fine-tuning needs them.

    With ``a = softcap * tanh(logits / softcap)`` (``a = logits`` when ``softcap`` is None) and
    ``p = softmax(a / T)`` over the last dimension: returns ``logp = log p[target]`` and, with
    ``return_entropy=True``, ``(logp, entropy)`` with ``entropy = -sum p log p``, both fp32
    (fp64 for fp64 logits) and shaped like ``target``. Positions equal to ``ignore_index``
    give 0 in both (and no gradient). ``logp <= 0`` and ``0 <= entropy <= log V`` always.

    Args:
        logits: ``(..., V)``, classes last (``(B, S, V)`` as language models hold them).
        target: ``(...)`` integer class indices (the sampled tokens).
        temperature: a number, a 0-dim tensor, or one value per token (``target``'s shape);
            differentiable when it requires grad.
        softcap: the cap ``c`` of ``c * tanh(z / c)``, applied before dividing by ``T``
            (Gemma-2's final-logit soft-capping); None for none.
        ignore_index: positions with this target are ignored.
        return_entropy: also return the entropy. Without it no entropy work is done; with it
            and no gradient reaching the entropy, its backward terms are skipped too.

    On CUDA the kernels read the logits once forward and once backward (the gradient written
    once), never dividing, copying or materialising them as probabilities; CPU tensors take
    a PyTorch path in chunks of rows.
    """
    return _token.run(_token.normalise(logits, target, temperature, softcap, ignore_index,
                                       return_entropy))


def linear_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    temperature: float | Tensor = 1.0,
    *,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    process_group=None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`token_logprobs` of ``hidden @ weight.T + bias`` without the ``N x V`` logits.

    Args:
        hidden: ``(*, H)`` last hidden states (``(B, S, H)``).
        weight: ``(V, H)`` the output embedding (the LM head), same dtype as ``hidden``.
        target: ``(*)`` integer token ids.
        bias: optional ``(V,)``.
        temperature, softcap, ignore_index, return_entropy: as in :func:`token_logprobs`.
        process_group: the vocabulary split over a ``torch.distributed`` group: ``weight``
            (and ``bias``) are this rank's row block (ranks in vocabulary order), ``target``
            holds global token ids; results and gradients equal the unsharded call's.
        chunk_size: rows per chunk (default: the linear head's, see
            :func:`linear_cross_entropy`).

    Returns ``logp`` (or ``(logp, entropy)``), fp32, shaped like ``target``; gradients flow
    to ``hidden``, ``weight``, ``bias`` and ``temperature``. The logits are made twice per
    chunk (forward and backward: four matrix products per chunk in all).
    """
    return _token_linear.run(_token_linear.normalise(
        hidden, weight, target, bias, temperature, softcap=softcap, ignore_index=ignore_index,
        return_entropy=return_entropy, process_group=process_group, chunk_size=chunk_size))
