"""Peak extra host memory (RSS) of a fused linear cross-entropy vs the eager reference.

``python -m bench.linear_memory --impl {tempfast,eager} --rows N --hidden H --classes C`` builds
random inputs, records the process's peak RSS, runs forward + backward once, and prints a JSON
line with the peak RSS growth in bytes. Run each implementation in its own process (peak RSS
never decreases); the tests and the benchmark suite do.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch

from tempfast import functional, reference


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(impl: str, rows: int, hidden: int, classes: int, dtype: torch.dtype,
            chunk_size: int | None = None, seed: int = 0) -> dict:
    """Peak RSS growth of one forward + backward of ``impl`` on fresh random inputs."""
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(rows, hidden, generator=g) / hidden**0.5).to(dtype).requires_grad_(True)
    w = torch.randn(classes, hidden, generator=g).to(dtype).requires_grad_(True)
    b = torch.zeros(classes, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, classes, (rows,), generator=g)
    small = functional.linear_cross_entropy(h[:2].detach(), w.detach()[:4], y[:2] % 4)
    del small  # warm-up: thread pools and allocator caches count in the baseline
    before = peak_rss_bytes()
    if impl == "tempfast":
        loss = functional.linear_cross_entropy(h, w, y, b, 2.0, chunk_size=chunk_size)
    else:
        loss = reference.linear_cross_entropy(h, w, y, b, 2.0)
    loss.backward()
    return {"impl": impl, "rows": rows, "hidden": hidden, "classes": classes,
            "dtype": str(dtype).removeprefix("torch."), "loss": float(loss.detach()),
            "peak_extra_bytes": peak_rss_bytes() - before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("tempfast", "eager"), required=True)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=65536)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--chunk-size", type=int, default=None)
    args = parser.parse_args(argv)
    result = measure(args.impl, args.rows, args.hidden, args.classes,
                     getattr(torch, args.dtype), args.chunk_size)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
