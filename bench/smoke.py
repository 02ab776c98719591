"""Smoke test of the kernels that wait (the cooperative slices launch), run first by
``bench/gpu_run.sh``.

Each waiting kernel (cross-entropy forward + backward, softmax forward, softmax backward with
dL/dT) runs at C in {32000, 262144}, bf16 and fp32, in a child process with a hard timeout: a
hang is reported as a hang and the next kernel runs. Per case: which launch ran (cooperative
grid or two launches) and how many waits gave up, the error against the fp64 reference, and the
time of the default launch beside the two-launch path (``TEMPFAST_COOPERATIVE=0``), CUDA events
over back-to-back calls.

    python -m bench.smoke OUTDIR [--timeout S]     # OUTDIR/smoke.jsonl and smoke.md

Without CUDA (the CPU rehearsal) the kernels run under the Triton interpreter on 2 rows of
9000 and 20000 classes with ``TEMPFAST_COOPERATIVE=1`` and 4 polls per wait (so the waits give
up and the repair launch runs); the times mean nothing there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("cross_entropy", "softmax", "softmax_backward")
CLASSES = (32000, 262144)
DTYPES = ("bf16", "fp32")
GPU_ROWS = 2048
CPU_ROWS = 2
CPU_CLASSES = (9000, 20000)  # the rehearsal: 2 and 3 slices, so that it stays quick
CPU_MAX_POLLS = 4
TOLERANCE = {"bf16": 2e-2, "fp32": 1e-4}  # max |error| / max |reference|, per output
REPEATS = 10


class _Spy:
    """Records the slices launches (grid, give-ups) of the calls made while it is active."""

    def __init__(self):
        from tempfast.ops import launch
        from tempfast.ops.cross_entropy import triton_path

        self.modules = (launch, triton_path)
        self.original = launch.run_slices
        self.seen: list[dict] = []

    def __call__(self, kernel, args, kw, grid, items, stats_kw=None):
        import torch

        from tempfast.kernels.common import WS_GAVE_UP

        self.original(kernel, args, kw, grid, items, stats_kw)
        ws = dict(zip(kernel.arg_names, args, strict=False))["ws_ptr"]
        gave_up = int(ws.view(torch.int32)[WS_GAVE_UP.value].item()) if grid is not None else 0
        self.seen.append({"kernel": kernel.fn.__name__, "grid": grid, "items": items,
                          "gave_up": gave_up})

    def __enter__(self):
        for m in self.modules:
            m.run_slices = self
        return self

    def __exit__(self, *exc):
        for m in self.modules:
            m.run_slices = self.original


def _case(kind: str, classes: int, dtype_name: str, device: str) -> dict:
    import torch

    import tempfast
    from tempfast import reference

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    rows = GPU_ROWS if device == "cuda" else CPU_ROWS
    gen = torch.Generator(device="cpu").manual_seed(classes)
    x0 = (torch.randn(rows, classes, generator=gen) * 4).to(device)
    y = torch.randint(0, classes, (rows,), generator=gen).to(device)
    dy = torch.randn(rows, classes, generator=gen).to(device)
    t0 = torch.linspace(0.5, 8.0, rows, device=device)

    def call(mod, dt):
        x = x0.to(dt, copy=True).requires_grad_(True)
        t_dtype = torch.float64 if dt == torch.float64 else torch.float32
        t = t0.to(t_dtype, copy=True).requires_grad_(True)
        if kind == "cross_entropy":
            loss = mod.cross_entropy(x, y, t)
            loss.backward()
            return loss.detach(), x.grad, t.grad
        if kind == "softmax":
            return (mod.softmax(x.detach(), t.detach()),)
        out = mod.softmax(x, t)
        out.backward(dy.to(dt))
        return x.grad, t.grad

    def timed() -> float:
        if device != "cuda":
            start = time.perf_counter()
            call(tempfast, dtype)
            return (time.perf_counter() - start) * 1e3
        call(tempfast, dtype)
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(REPEATS):
            call(tempfast, dtype)
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / REPEATS

    with tempfast.use_backend("triton"):
        with _Spy() as spy:
            got = call(tempfast, dtype)
            if device == "cuda":
                torch.cuda.synchronize()
        launches = spy.seen
        ms_default = timed()
        saved = os.environ.get("TEMPFAST_COOPERATIVE")
        os.environ["TEMPFAST_COOPERATIVE"] = "0"
        try:
            ms_two = timed()
        finally:
            if saved is None:
                os.environ.pop("TEMPFAST_COOPERATIVE")
            else:
                os.environ["TEMPFAST_COOPERATIVE"] = saved
    x0 = x0.to(dtype).double()  # the reference sees the inputs the kernels see
    want = call(reference, torch.float64)
    with tempfast.use_backend("torch"):  # PyTorch's own error in this dtype: the yardstick
        base = call(tempfast, dtype)

    def error(outputs) -> float:
        return max(((g.double() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item()
                   for g, w in zip(outputs, want, strict=True))

    err, torch_err = error(got), error(base)
    cooperative = [lc for lc in launches if lc["grid"] is not None]
    return {"kind": kind, "classes": classes, "dtype": dtype_name, "rows": rows,
            "device": device, "status": "ok" if err <= max(TOLERANCE[dtype_name],
                                                           2 * torch_err) else "WRONG",
            "max_rel_error": err, "torch_path_error": torch_err,
            "cooperative_launches": len(cooperative), "slices_launches": len(launches),
            "gave_up": sum(lc["gave_up"] for lc in cooperative),
            "ms_default": ms_default, "ms_two_launch": ms_two}


def _child(kind: str, jsonl: Path) -> int:
    import torch

    from tempfast.ops import launch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for classes in CLASSES if device == "cuda" else CPU_CLASSES:
        for dtype in DTYPES:
            try:
                if device == "cuda":
                    row = _case(kind, classes, dtype, device)
                else:
                    with launch.wait_hook(CPU_MAX_POLLS):
                        row = _case(kind, classes, dtype, device)
            except Exception as exc:  # one line in the report, the next case runs
                row = {"kind": kind, "classes": classes, "dtype": dtype, "device": device,
                       "status": f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


def _markdown(rows: list[dict]) -> str:
    out = ["| kernel | C | dtype | status | max rel. error | PyTorch path's | cooperative "
           "launches | gave up | ms default | ms two launches | two / default |",
           "|---" * 11 + "|"]
    for r in rows:
        ratio = (f"{r['ms_two_launch'] / r['ms_default']:.2f}"
                 if r.get("ms_default") else "-")
        out.append(f"| {r['kind']} | {r['classes']} | {r['dtype']} | {r['status']} | "
                   f"{r.get('max_rel_error', float('nan')):.2g} | "
                   f"{r.get('torch_path_error', float('nan')):.2g} | "
                   f"{r.get('cooperative_launches', '-')} / {r.get('slices_launches', '-')} | "
                   f"{r.get('gave_up', '-')} | {r.get('ms_default', float('nan')):.3f} | "
                   f"{r.get('ms_two_launch', float('nan')):.3f} | {ratio} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds per kernel (its four cases) before it counts as hung")
    parser.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    jsonl = args.outdir / "smoke.jsonl"
    if args.kind:
        return _child(args.kind, jsonl)
    jsonl.write_text("")
    env = dict(os.environ)
    import torch

    if not torch.cuda.is_available():  # the CPU rehearsal: interpreter, forced cooperative
        env.update(TRITON_INTERPRET="1", TEMPFAST_COOPERATIVE="1")
    failed = False
    for kind in KINDS:
        before = len(jsonl.read_text().splitlines())
        try:
            subprocess.run([sys.executable, "-m", "bench.smoke", str(args.outdir), "--kind",
                            kind], env=env, timeout=args.timeout, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            done = len(jsonl.read_text().splitlines()) - before
            with jsonl.open("a") as f:
                f.write(json.dumps({"kind": kind, "classes": "-", "dtype": "-",
                                    "status": f"HANG: no result after {args.timeout:.0f} s "
                                              f"({done} of 4 cases done)"}) + "\n")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    failed = any(r["status"] != "ok" for r in rows) or len(rows) < len(KINDS) * 4
    (args.outdir / "smoke.md").write_text(_markdown(rows))
    print(_markdown(rows), end="")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
