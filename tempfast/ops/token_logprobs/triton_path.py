"""The Triton path of the token statistics: launchers of ``kernels/token_logprobs.py``, with the
contract of ``torch_path.py`` (see there for the shapes).

Forward: one launch when a row is one slice (``rows``), else the statistics launch and the
finish launch that combines each row's partials (``slices``); the logits are read once either
way. Backward: one launch (one more read of the logits, the gradient written once); a row's
shares of dL/dT are summed here in slice order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...kernels import token_logprobs as kernels
from ...kernels.heuristics import LaunchConfig, cdiv, next_pow2
from ..launch import num_sms, quiet_interpreter, row_vector_width, temperature_args, unit_col_stride


def config(x: Tensor, *others: Tensor) -> tuple[LaunchConfig, int]:
    """The launch configuration of rows of ``x`` (and ``others`` read or written alike) and
    the columns of a slice."""
    n_rows, n_cols = x.shape
    cfg = kernels.token_config(n_rows, n_cols, num_sms(x.device), row_vector_width(x, *others))
    return cfg, kernels.token_slice_len(n_cols, cfg.n_slices, cfg.block_c)


@quiet_interpreter
def token_forward(x: Tensor, target: Tensor, t: Tensor | None, t_value: float, softcap: float,
                  ignore_index: int, entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`tempfast.ops.token_logprobs.torch_path.token_forward`."""
    x = unit_col_stride(x)
    n_rows, n_cols = x.shape
    logp, lse = (torch.empty(n_rows, dtype=torch.float32, device=x.device) for _ in range(2))
    h = torch.empty(n_rows if entropy else 0, dtype=torch.float32, device=x.device)
    cfg, slice_len = config(x)
    t_args = temperature_args(t, t_value, lse)
    grid = (cdiv(n_rows, cfg.block_n), cfg.n_slices)
    flags = {"SOFTCAP": softcap > 0, "ENTROPY": entropy}
    final = cfg.n_slices == 1
    part = lse if final else torch.empty(n_rows * cfg.n_slices * 3, dtype=torch.float32,
                                         device=x.device)
    h_ptr = h if entropy else lse
    kernels.token_stats_kernel[grid](
        x, x.stride(0), *t_args, target, logp, h_ptr, lse, part, n_rows, n_cols, slice_len,
        cfg.n_slices, ignore_index, float(softcap), **flags, FINAL=final, VEC=cfg.vec,
        BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    if not final:
        block_n = kernels.finish_rows(cfg.n_slices)
        kernels.token_finish_kernel[(cdiv(n_rows, block_n),)](
            x, x.stride(0), *t_args, target, logp, h_ptr, lse, part, n_rows, n_cols,
            cfg.n_slices, ignore_index, float(softcap), **flags, BLOCK_N=block_n,
            BLOCK_S=next_pow2(cfg.n_slices), num_warps=8)
    return logp, h, lse


@quiet_interpreter
def token_backward(x: Tensor, target: Tensor, t: Tensor | None, t_value: float,
                   softcap: float, ignore_index: int, h: Tensor, lse: Tensor,
                   g_lp: Tensor | None, g_h: Tensor | None, g_lse: Tensor | None,
                   compute_dt: bool) -> tuple[Tensor, Tensor]:
    """See :func:`tempfast.ops.token_logprobs.torch_path.token_backward`."""
    x = unit_col_stride(x)
    n_rows, n_cols = x.shape
    gx = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    cfg, slice_len = config(x, gx)
    shares = torch.empty((n_rows, cfg.n_slices, 2) if compute_dt else 0, dtype=torch.float32,
                         device=x.device)
    has_gh = g_h is not None

    def ptr(g: Tensor | None) -> Tensor:
        return lse if g is None else g.contiguous()

    kernels.token_grad_kernel[(cdiv(n_rows, cfg.block_n), cfg.n_slices)](
        x, x.stride(0), *temperature_args(t, t_value, lse), target, h if has_gh else lse, lse,
        ptr(g_lp), ptr(g_h), ptr(g_lse), gx, gx.stride(0), shares if compute_dt else lse,
        n_rows, n_cols, slice_len, cfg.n_slices, ignore_index, float(softcap),
        int(g_lp is not None), int(g_lse is not None), SOFTCAP=softcap > 0, HAS_GH=has_gh,
        COMPUTE_DT=compute_dt, VEC=cfg.vec, BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c,
        num_warps=cfg.num_warps)
    if not compute_dt:
        return gx, shares.reshape(0, 2)
    return gx, shares.sum(1) if cfg.n_slices > 1 else shares.reshape(n_rows, 2)
