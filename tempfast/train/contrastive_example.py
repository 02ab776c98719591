"""SimCLR with a learned temperature: how to train with :func:`tempfast.nt_xent_loss`, on one
process or data-parallel over ``torch.distributed`` (its ``process_group=``).

Run::

    python -m tempfast.train.contrastive_example        # digits: about 20 s on one CPU core
    torchrun --nproc-per-node 2 -m tempfast.train.contrastive_example

A small CNN encoder (no batch norm, so that a row's features never depend on the other rows on
its rank) and a projection head are trained on two augmented views of each image (a random
affine map: rotation, scale, shift; contrast, brightness, Gaussian noise; a horizontal flip for
clothes) with NT-Xent at a temperature ``T = exp(log T)`` learned beside the weights
(``--fixed-temp`` keeps it). The data are Fashion-MNIST when Debian's ``dataset-fashion-mnist``
is installed (or ``--data-dir`` holds its IDX files; 6000 training images by default, about 90
s), else scikit-learn's 8x8 digits (``--data`` chooses). Then a linear probe (logistic
regression on the standardised, frozen encoder features of the training images) is fitted on
the trained encoder and on the same encoder as it was before training (the same seed), and both
are scored on the test images.

Under torchrun every rank builds the same networks and draws the same global batches and
augmentations, then encodes its own slice of each batch (the first ``B % world`` ranks one row
more) and calls ``nt_xent_loss(z1, z2, T, process_group=group)``: each rank gets the loss of the
global batch and the gradient of its own rows, so the weights' gradients are summed over the
ranks (not averaged, as DistributedDataParallel would); T's gradient is already whole on every
rank. Every rank then takes the same step, and the losses are the single-process run's but
for rounding (the gradients are summed in another order), which a long run amplifies as it
amplifies any change of summation order (a second CPU thread does as much).

Output (rank 0): a header line, the first step's loss, one line per epoch (mean loss, T, time),
the last epoch's loss with the final T, and the probe's test accuracy for the trained and for
the random encoder; exit 0. Bad flags or missing data: one line, exit 2; Ctrl-C: one line,
exit 130. Measured on one CPU core with the defaults: digits 98.6% trained against 92.5% random
(T 0.5 -> 0.093); Fashion-MNIST 78% against 76%, where two minutes of CPU train too little.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import tempfast
from tempfast.errors import UsageError
from tempfast.train.data import DataBundle, load_data
from tempfast.train.models import Normalize

PROG = "python -m tempfast.train.contrastive_example"
# The defaults of --epochs, --batch-size and --max-train (None: every image) per data set: a run
# takes about 20 s on digits and 90 s on Fashion-MNIST on one core of the 2-core CPU machine.
DEFAULTS = {"digits": {"epochs": 100, "batch_size": 256, "max_train": None},
            "fashion-mnist": {"epochs": 20, "batch_size": 256, "max_train": 6000}}
QUICK = {"epochs": 10, "batch_size": 64, "max_train": 256}  # --quick: a run of seconds (tests)
PROBE_STEPS = 100  # LBFGS iterations of the linear probe
PROBE_WEIGHT_DECAY = 1e-4  # L2 penalty of the probe's weights (standardised features)


@dataclass
class Views:
    """Augmentation strengths: rotation (degrees), scale (``1 +- scale``) and shift (a fraction
    of the image side) of a random affine map, contrast and brightness factors (``1 +- value``),
    the standard deviation of added Gaussian noise, and whether images may be mirrored."""

    rotation: float = 15.0
    scale: float = 0.15
    shift: float = 0.125
    contrast: float = 0.4
    brightness: float = 0.4
    noise: float = 0.1
    flip: bool = False


def augment(x: Tensor, views: Views, gen: torch.Generator) -> Tensor:
    """One random view of each image of ``x`` (B, C, H, W) in [0, 1], drawn from ``gen``.

    A random affine map (rotation, scale, shift; zero outside the image, bilinear), a
    horizontal flip (if ``views.flip``), contrast around the image's mean, brightness, additive
    Gaussian noise; the result is clipped to [0, 1]. The draws are made on the CPU, so a seed
    gives the same views on every device.
    """
    b = x.shape[0]

    def uniform(*shape: int) -> Tensor:  # in [-1, 1)
        return 2 * torch.rand(b, *shape, generator=gen) - 1

    angle = uniform() * math.radians(views.rotation)
    scale = 1 + views.scale * uniform()
    shift = 2 * views.shift * uniform(2)  # affine_grid's coordinates span [-1, 1]
    flip = 1 - 2 * ((torch.rand(b, generator=gen) < 0.5) & views.flip).float()  # -1: mirror
    contrast = 1 + views.contrast * uniform(1, 1, 1)
    brightness = 1 + views.brightness * uniform(1, 1, 1)
    noise = views.noise * torch.randn(x.shape, generator=gen)
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast.to(x) + mean
    return (x * brightness.to(x) + noise.to(x)).clamp(0, 1)


class Encoder(nn.Module):
    """Three 3x3 conv-ReLU layers (``width``, 2x, 4x channels; 2x2 max-pools after the second
    and, for images of 16 px or more, after the first), global average pooling: features
    ``(B, 4 * width)`` of [0, 1] images ``(B, C, H, W)``."""

    def __init__(self, data: DataBundle, width: int = 12) -> None:
        super().__init__()
        pool_first = [nn.MaxPool2d(2)] if data.img_size >= 16 else []
        self.net = nn.Sequential(
            Normalize(data.mean, data.std),
            nn.Conv2d(data.in_chans, width, 3, padding=1), nn.ReLU(), *pool_first,
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_features = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def projection_head(features: int, out: int = 64) -> nn.Sequential:
    """SimCLR's projection MLP ``features -> features -> out`` (its output is what NT-Xent
    compares; the probe uses the encoder's features before it)."""
    return nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, out))


def batch_slice(batch: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s rows of a global batch of ``batch``: the first ``batch % world`` ranks
    hold one row more."""
    base, extra = divmod(batch, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


@torch.no_grad()
def encode(encoder: nn.Module, data: DataBundle, split: str, device: torch.device,
           batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """The encoder's features ``(N, F)`` and the labels ``(N,)`` of every image of ``split``
    (``"train"`` or ``"test"``), unaugmented."""
    source = data.train if split == "train" else data.test
    index = list(torch.arange(len(source)).split(batch_size))
    feats, labels = zip(*((encoder(x), y) for x, y in source.batches(index, device)),
                        strict=True)
    return torch.cat(feats), torch.cat(labels)


def linear_probe(encoder: nn.Module, data: DataBundle, device: torch.device) -> float:
    """Test accuracy of a logistic regression (full-batch LBFGS, a small L2 penalty) fitted on
    the frozen encoder's standardised features of the training images."""
    f_train, y_train = encode(encoder, data, "train", device)
    f_test, y_test = encode(encoder, data, "test", device)
    mean, std = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    probe = nn.Linear(f_train.shape[1], data.num_classes).to(device)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=PROBE_STEPS,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (F.cross_entropy(probe(f_train), y_train)
                + PROBE_WEIGHT_DECAY * probe.weight.square().sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (probe(f_test).argmax(1) == y_test).float().mean().item()


def _flags(values: dict[str, int | None]) -> str:
    """``{"max_train": 256}`` -> ``"--max-train 256"`` (None: left out)."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items() if v is not None)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="SimCLR with a learned temperature "
                                "(tempfast.nt_xent_loss), then a linear probe")
    p.add_argument("--data", choices=("auto", "digits", "fashion-mnist"), default="auto",
                   help="auto: Fashion-MNIST when its files load, else digits")
    p.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST's IDX files (default: Debian's folder)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global, over all ranks")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    p.add_argument("--temp", type=float, default=0.5, help="initial temperature")
    p.add_argument("--fixed-temp", action="store_true", help="keep T at --temp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None,
                   help="train on a stratified subset of this many images")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: the layers are small, and a second thread "
                        "mostly waits, far longer when the cores are busy)")
    p.add_argument("--quick", action="store_true", help="a run of seconds (tests)")
    p.epilog = "defaults: " + "; ".join(f"{name}: {_flags(values)}" for name, values in
                                        [*DEFAULTS.items(), ("--quick", QUICK)])
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "max_train", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size is not None and args.batch_size < 2:
        p.error("--batch-size must be >= 2 (NT-Xent needs negatives)")
    if not (args.lr > 0 and args.temp > 0):
        p.error("--lr and --temp must be > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def _data(args: argparse.Namespace) -> DataBundle:
    """Fashion-MNIST (``--data auto`` falls back to digits when its files do not load),
    subsampled to ``--max-train``; fills the flags left unset with the data set's defaults (or
    ``--quick``'s)."""
    if args.data == "digits":
        data = load_data("digits")
    else:
        try:
            data = load_data("fashion-mnist", data_dir=args.data_dir)
        except UsageError:
            if args.data == "fashion-mnist":
                raise
            data = load_data("digits")
    for name, value in (QUICK if args.quick else DEFAULTS[data.name]).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.max_train is None or args.max_train >= data.n_train:
        return data
    if args.max_train < data.num_classes:
        raise UsageError(f"--max-train must be at least {data.num_classes} (every class a "
                         f"share), got {args.max_train}")
    return data.with_train_subset(args.max_train, 0)


def _join_group(args: argparse.Namespace) -> tuple[int, int, torch.device,
                                                    dist.ProcessGroup | None]:
    """Under torchrun: join its group (NCCL on GPUs, gloo on CPU); else one process, no group."""
    cuda = args.device == "cuda"
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device(args.device), None
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda \
        else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, dist.group.WORLD


def _sum_grads(params: list[nn.Parameter], group: dist.ProcessGroup) -> None:
    """Sum the parameters' gradients over the ranks (each rank's covers its own rows only), in
    one all-reduce."""
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, group=group)
    for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad.copy_(g.view_as(p))


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device,
          group: dist.ProcessGroup | None) -> None:
    """Train the encoder with NT-Xent (this rank's share), then probe it; rank 0 prints."""

    def say(line: str) -> None:
        if rank == 0:
            print(line, flush=True)

    data = _data(args)
    batch = min(args.batch_size, data.n_train)
    views = Views(flip=data.flip)
    torch.manual_seed(args.seed)  # the same networks on every rank
    encoder = Encoder(data).to(device)
    head = projection_head(encoder.out_features).to(device)
    untrained = copy.deepcopy(encoder)
    log_t = nn.Parameter(torch.tensor(math.log(args.temp), device=device),
                         requires_grad=not args.fixed_temp)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.Adam([{"params": params}, {"params": [log_t]}], lr=args.lr)
    mine = batch_slice(batch, rank, world)
    steps = data.n_train // batch
    say(f"SimCLR on {data.name}: {data.n_train} training images, batch {batch} over {world} "
        f"process(es), {steps} steps per epoch, T {args.temp} "
        f"({'fixed' if args.fixed_temp else 'learned'})")
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        order = torch.randperm(data.n_train, generator=gen)[: steps * batch]
        total = 0.0
        for step, (x, _) in enumerate(data.train.batches(list(order.split(batch)), device)):
            x1, x2 = augment(x, views, gen)[mine], augment(x, views, gen)[mine]
            z1 = F.normalize(head(encoder(x1)), dim=1)
            z2 = F.normalize(head(encoder(x2)), dim=1)
            loss = tempfast.nt_xent_loss(z1, z2, log_t.exp(), process_group=group)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if group is not None:
                _sum_grads(params, group)  # dL/dT is whole on every rank already
            opt.step()
            total += loss.item()
            if epoch == 0 and step == 0:
                say(f"step 1  loss {loss.item():.6f}")
        mean_loss = total / steps
        say(f"epoch {epoch + 1}/{args.epochs}  loss {mean_loss:.4f}  "
            f"T {log_t.exp().item():.4f}  {time.perf_counter() - t0:.1f} s")
    say(f"final  loss {mean_loss:.6f}  {'fixed' if args.fixed_temp else 'learned'} T "
        f"{log_t.exp().item():.6f}")
    if rank == 0:
        trained_acc = linear_probe(encoder, data, device)
        random_acc = linear_probe(untrained, data, device)
        say(f"linear probe, test accuracy: trained encoder {trained_acc:.1%}, "
            f"random encoder {random_acc:.1%}")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train and probe; returns the exit status. Under torchrun every rank
    meets the same error or Ctrl-C, and rank 0 alone says so."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    rank, world, device, group = _join_group(args)
    finished, message, status = False, None, 0
    try:
        train(args, rank, world, device, group)
        finished = True
    except UsageError as exc:
        message, status = f"error: {exc}", 2
    except KeyboardInterrupt:
        message, status = "interrupted", 130
    finally:
        if group is not None:
            if finished:  # as tempfast.train.distributed.teardown: no group kept alive by a
                gc.collect()  # cycle past its destruction, no rank leaving while another talks
                dist.barrier()
            dist.destroy_process_group()
    if message is not None and rank == 0:
        print(f"{PROG}: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
