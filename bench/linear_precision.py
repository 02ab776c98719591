"""The precision cost of accumulating the linear head's weight gradient in bf16.

    python -m bench.linear_precision [--rows 4096] [--hidden 256] [--classes 2048]

bf16 hidden and weight; the weight gradient of ``linear_cross_entropy`` (mean, T = 1) with
the default fp32 accumulator and with ``accum_dtype=torch.bfloat16``, against a float64
reference built from the same bf16 inputs, for 1 to 64 chunks of rows. Prints one line per
chunk count: the relative error ``||dW - dW_ref|| / ||dW_ref||`` of each accumulator, then
a JSON line with the same numbers. CPU, the PyTorch path (the chunk products are cuBLAS's on a
GPU: the rounding of the bf16 accumulator between chunks is the same).
"""

from __future__ import annotations

import argparse
import json

import torch

import tempfast
from tempfast import reference


def weight_grad(hidden, weight, target, **kwargs) -> torch.Tensor:
    w = weight.clone().requires_grad_(True)
    tempfast.linear_cross_entropy(hidden, w, target, **kwargs).backward()
    return w.grad.double()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.linear_precision",
                                description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--classes", type=int, default=2048)
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.rows, args.hidden, generator=g).bfloat16()
    weight = (torch.randn(args.classes, args.hidden, generator=g) / args.hidden ** 0.5).bfloat16()
    target = torch.randint(0, args.classes, (args.rows,), generator=g)
    w64 = weight.double().requires_grad_(True)
    reference.linear_cross_entropy(hidden.double(), w64, target).backward()
    ref = w64.grad
    out = {}
    for chunks in (1, 4, 16, 64):
        step = -(-args.rows // chunks)
        errors = {}
        for name, accum in (("fp32", None), ("bf16", torch.bfloat16)):
            dw = weight_grad(hidden, weight, target, chunk_size=step, accum_dtype=accum)
            errors[name] = float((dw - ref).norm() / ref.norm())
        out[chunks] = errors
        print(f"{chunks:3d} chunks: relative error fp32 accumulator {errors['fp32']:.2e}, "
              f"bf16 accumulator {errors['bf16']:.2e}")
    print(json.dumps({"shape": [args.rows, args.hidden, args.classes], "errors": out}))
    return out


if __name__ == "__main__":
    main()
