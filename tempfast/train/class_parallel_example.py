"""A class-sharded classifier head over ``torch.distributed``: how to wire
:func:`tempfast.parallel.linear_cross_entropy` (here through
:class:`tempfast.nn.LinearTemperatureCrossEntropy` with ``process_group=``).

Run with one process per shard::

    torchrun --nproc-per-node 2 -m tempfast.train.class_parallel_example --num-classes 20000

(without torchrun it runs as a group of one). Every rank sees the same batches (tensor
parallelism, not data parallelism) and holds the same feature network (same seed), so the
features' gradients agree on every rank: the class-parallel loss all-reduces the hidden
gradient itself. Rank ``r`` holds the classifier rows of classes ``[start_r, start_r + C_r)``,
the classes split as evenly as possible. The data are the trainer's ``synthetic`` set
(prototype images of ``--num-classes`` classes). ``--check`` compares the first batch's loss
and the hidden gradient with the unsharded head built from the gathered shards.

Output: one line per epoch on rank 0 (loss, test accuracy, temperature), one line for
``--check``; exit 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

import torch
import torch.distributed as dist
from torch import nn

import tempfast
from tempfast.nn import LinearTemperatureCrossEntropy
from tempfast.train.data import load_data

TEMP_LR = 0.01  # SGD learning rate of log T with --learn-temp


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, width)`` of rank ``rank``'s classes: the first ``num_classes % world`` ranks
    hold one class more."""
    base, extra = divmod(num_classes, world)
    return rank * base + min(rank, extra), base + (rank < extra)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tempfast.train.class_parallel_example",
                                description="class-parallel temperature cross-entropy")
    p.add_argument("--num-classes", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--temp", type=float, default=0.1,
                   help="temperature of the cosine head's logits (ArcFace's scale s = 1 / T)")
    p.add_argument("--learn-temp", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true",
                   help="compare the first batch with the unsharded head")
    args = p.parse_args(argv)
    for name in ("num_classes", "hidden", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not (args.lr > 0 and args.temp > 0):
        p.error("--lr and --temp must be > 0")
    return args


def _join_group() -> tuple[int, int, torch.device, str | None]:
    """Join torchrun's group (NCCL on GPUs, gloo on CPU), or make a group of one."""
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
              if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store_dir = None
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    else:
        store_dir = tempfile.mkdtemp(prefix="tempfast-cp-")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"file://{store_dir}/store", rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size(), device, store_dir


class CosineFeatures(nn.Module):
    """An MLP trunk whose output is L2-normalised, so that ``W h`` are cosines (with the head's
    rows normalised too) and the temperature alone sets the logits' scale."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 256), nn.ReLU(),
                                 nn.Linear(256, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=-1)


def _normalise_rows(head: LinearTemperatureCrossEntropy) -> None:
    with torch.no_grad():
        w = head.weight
        w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-12))


def _check(features: nn.Module, head: LinearTemperatureCrossEntropy, x: torch.Tensor,
           y: torch.Tensor, world: int) -> str:
    """The sharded loss and hidden gradient against the unsharded head (gathered shards)."""
    h = features(x).detach().requires_grad_(True)
    loss = head(h, y)
    loss.backward()
    widths = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(widths, torch.tensor([head.weight.shape[0]], device=x.device))
    widest = int(max(widths))  # all_gather wants equal shapes: pad, gather, trim
    mine = torch.zeros(widest, head.weight.shape[1], device=x.device, dtype=head.weight.dtype)
    mine[:head.weight.shape[0]] = head.weight.detach()
    shards = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(shards, mine)
    weight = torch.cat([w[:int(n)] for w, n in zip(shards, widths, strict=True)])
    h_full = h.detach().clone().requires_grad_(True)
    full = tempfast.linear_cross_entropy(h_full, weight, y, None, head.temperature.detach())
    full.backward()
    head.zero_grad(set_to_none=True)
    grad_err = (h.grad - h_full.grad).abs().max().item()
    return (f"check: sharded loss {loss.item():.6f}, unsharded {full.item():.6f}, "
            f"max |d hidden| difference {grad_err:.2e}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    rank, world, device, store_dir = _join_group()
    finished = False
    try:
        data = load_data("synthetic", seed=args.seed, num_classes=args.num_classes, img_size=8)
        start, width = shard_range(args.num_classes, rank, world)
        torch.manual_seed(args.seed)  # the same trunk on every rank
        features = CosineFeatures(data.in_chans * data.img_size ** 2, args.hidden).to(device)
        torch.manual_seed(args.seed + 1 + rank)  # each rank its own classes' rows
        head = LinearTemperatureCrossEntropy(args.hidden, width, args.temp,
                                             learnable=args.learn_temp, bias=False,
                                             process_group=dist.group.WORLD, start=start,
                                             device=device)
        _normalise_rows(head)
        temperature = [p for n, p in head.named_parameters() if n == "log_temperature"]
        weights = list(features.parameters()) + [p for n, p in head.named_parameters()
                                                 if n != "log_temperature"]
        # log T moves far faster than the weights at their learning rate: its own, smaller one
        groups = [{"params": weights}] + ([{"params": temperature, "lr": TEMP_LR}]
                                          if temperature else [])
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9)
        gen = torch.Generator().manual_seed(args.seed)
        n_train = data.n_train
        x_test, y_test = next(data.test.batches([torch.arange(data.n_test)], device))
        if rank == 0:
            print(f"class-parallel head: {args.num_classes} classes over {world} rank(s) "
                  f"(rank 0: classes [0, {shard_range(args.num_classes, 0, world)[1]})), "
                  f"{n_train} training images, T = {args.temp}", flush=True)
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            order = torch.randperm(n_train, generator=gen)  # same order on every rank
            batches = list(order.split(args.batch_size))
            total, seen = 0.0, 0
            for i, (x, y) in enumerate(data.train.batches(batches, device)):
                if args.check and epoch == 0 and i == 0:
                    line = _check(features, head, x, y, world)
                    if rank == 0:
                        print(line, flush=True)
                loss = head(features(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _normalise_rows(head)
                total += loss.item() * y.numel()
                seen += y.numel()
            with torch.no_grad():
                acc = (head.predict(features(x_test)) == y_test).float().mean().item()
            if rank == 0:
                print(f"epoch {epoch + 1}/{args.epochs}  loss {total / seen:.4f}  "
                      f"test acc {acc:.1%}  T {head.temperature.item():.4g}  "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
        finished = True
    finally:
        if finished:  # as tempfast.train.distributed.teardown: no group kept alive by a
            gc.collect()  # cycle past its destruction, no rank leaving while another talks
            dist.barrier()
        dist.destroy_process_group()
        if store_dir is not None:
            for name in os.listdir(store_dir):
                os.unlink(os.path.join(store_dir, name))
            os.rmdir(store_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
