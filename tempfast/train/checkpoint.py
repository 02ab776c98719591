"""Training checkpoints: atomic writes, safe loads, RNG state, model restore.

A checkpoint is a dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)`` (tensors and plain Python containers only, no code runs on
load). The trainer stores:

==============  =============================================================================
key             value
==============  =============================================================================
format          ``"tempfast-train/1"``
model           the model's ``state_dict`` (no DDP / torch.compile prefixes)
model_config    ``name, num_classes, in_chans, img_size, mean, std, patch_size`` for
                :func:`build_model`
criterion       the loss module's ``state_dict`` (``log_temperature``)
temperature     the current temperature ``T`` (float; the learned value with --learn-temp)
optimizer       ``optimizer.state_dict()``; ``scheduler``, ``scaler`` likewise (or None)
rng             one dict per rank: python, numpy, torch CPU and CUDA generator states
epoch, step     finished epochs, and the next step inside epoch ``epoch`` (0 at a boundary)
partial         running ``[loss_sum, correct, count]`` of an interrupted epoch, else None
best            ``{"metric", "value", "epoch"}`` of the best evaluated epoch so far
train_time_s    seconds spent in training epochs so far, summed over resumed invocations
wall_time_s     wall-clock seconds behind this state, summed over resumed invocations
config          the run's resolved flags (plain JSON-able dict)
calibration     (only after ``tempfast calibrate``) the fitted temperature and its report
==============  =============================================================================
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import nn

from ..errors import UsageError, os_reason
from .models import SMALL_CNNS, build_model, legacy_patch_size

FORMAT = "tempfast-train/1"
RESTORE_KEYS = ("model", "model_config")
RESUME_KEYS = (*RESTORE_KEYS, "criterion", "optimizer", "scheduler", "scaler", "rng", "epoch",
               "step", "partial", "best", "train_time_s")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via ``write(file)`` into a temp file in the same folder, fsync, rename.

    Readers see the old file or the complete new one, never a partial write. The file gets
    the mode a plain ``open(path, "w")`` would give it (0666 less the umask; ``mkstemp``'s
    temp file is 0600).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`UsageError` naming ``what`` (a flag) unless files can be created in the
    folder ``path`` (or, where it does not exist yet, in its nearest existing ancestor). A
    probe file is created and removed; nothing else is written (a folder that does not exist
    is not created). Catches read-only file systems, paths under a file and missing
    permissions before any work starts."""
    path = Path(path)
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UsageError(f"{what} {path}: cannot be created, {probe_dir} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".tempfast-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write there: {os_reason(exc)}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` for UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save(state)`` to ``path`` atomically (temp file in the same folder, fsync,
    ``os.replace``)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """Load a tempfast checkpoint onto the CPU with ``torch.load(weights_only=True)``.

    ``required``: entries the caller needs (``("model", "model_config")`` to restore the
    model; :data:`RESUME_KEYS` to continue training).

    Raises:
        UsageError: (one line) the file is missing, unreadable, corrupt, not a tempfast
            checkpoint, or lacks a required entry.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found" if not path.exists()
                         else f"checkpoint {path} is not a file")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"checkpoint {path} is unreadable or corrupt: not a zip archive as "
                         "torch.save writes (truncated, or not a checkpoint)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stray files
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"checkpoint {path} is unreadable or corrupt: {_load_failure(exc)}")\
            from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"checkpoint {path} is not a tempfast training checkpoint")
    missing = [key for key in required if key not in state]
    if missing:
        raise UsageError(f"checkpoint {path} is incomplete: no {', '.join(map(repr, missing))} "
                         "entry")
    if "model" in required and not isinstance(state["model"], dict):
        raise UsageError(f"checkpoint {path} is incomplete: its 'model' entry holds no weights")
    return state


def weights_mismatch(model: nn.Module, state: dict) -> str | None:
    """One line saying how ``state`` (a state dict) does not fit ``model``, or None if it
    does: missing and unexpected entries (counted, first ones named) and the first shape that
    differs. ``load_state_dict``'s own message spans many lines."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and isinstance(state[k], torch.Tensor)
              and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:2]) + (", ..." if len(keys) > 2 else "")
            parts.append(f"{len(keys)} {what} ({shown})")
    if shapes:
        key = shapes[0]
        parts.append(f"{key} is {tuple(state[key].shape)} in the checkpoint, "
                     f"{tuple(own[key].shape)} in the model"
                     + (f" (and {len(shapes) - 1} more shapes differ)" if len(shapes) > 1
                        else ""))
    return "; ".join(parts) or None


def _load_failure(exc: BaseException) -> str:
    """One line saying why ``torch.load`` failed. For a file holding more than tensors and
    plain containers, only what it holds: torch's message goes on to suggest loading it
    unsafely (``weights_only=False``, allow-listing the global), advice a reader of an untrusted
    file must not follow."""
    text = _ANSI_ESCAPE.sub("", str(exc)).strip()
    if text.startswith("Weights only load failed"):
        found = re.search(r"WeightsUnpickler error: (.+?)(?:\.? Please\b|\.?\n|\.?$)", text)
        what = found.group(1) if found else "objects a safe load refuses"
        return f"it holds more than tensors and plain containers ({what})"
    if isinstance(exc, KeyError):  # the unpickler met an unknown opcode or record
        return f"invalid data (KeyError {text})"
    return text.splitlines()[0] if text else type(exc).__name__


def _patch_size(cfg: dict) -> int | None:
    """The patch size a checkpoint's model was built with: recorded (None: the default rule),
    or, for a vision transformer saved before it was recorded, the rule of that time."""
    if "patch_size" in cfg:
        return cfg["patch_size"]
    if cfg["name"] in SMALL_CNNS:
        return None
    import timm

    vit = hasattr(timm.create_model(cfg["name"], pretrained=False), "patch_embed")
    return legacy_patch_size(cfg["img_size"]) if vit else None


def restore_model(ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model stored in ``ckpt`` (see ``model_config``), load its weights, move it
    to ``device`` and return it in eval mode."""
    cfg = ckpt["model_config"]
    try:
        model = build_model(cfg["name"], cfg["num_classes"], cfg["in_chans"], cfg["img_size"],
                            cfg["mean"], cfg["std"], _patch_size(cfg),
                            strict="patch_size" in cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"checkpoint model_config is not usable ({type(exc).__name__}: "
                         f"{exc})") from None
    mismatch = weights_mismatch(model, ckpt["model"])
    if mismatch is not None:
        raise UsageError(f"checkpoint weights do not fit model {cfg['name']!r} with "
                         f"{cfg['num_classes']} classes: {mismatch}")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UsageError(f"checkpoint weights do not fit model {cfg['name']!r}: "
                         f"{str(exc).strip().splitlines()[-1].strip()}") from None
    return model.to(device).eval()


def checkpoint_data(ckpt: dict, data_dir: str | None = None):
    """The data bundle of a checkpoint's run (the same split; ``data_dir`` overrides where the
    files are), checked against the checkpoint's model.

    Raises:
        UsageError: the data cannot be loaded, or do not fit the model (classes, channels,
            image size).
    """
    from .data import load_data

    cfg, model_config = ckpt.get("config") or {}, ckpt["model_config"]
    name = cfg.get("data", "digits")
    bundle = load_data(name, data_dir or cfg.get("data_dir"), False, cfg.get("data_seed", 0),
                       num_classes=cfg.get("num_classes") if name == "synthetic" else None,
                       img_size=cfg.get("img_size") if name in ("imagefolder", "synthetic")
                       else None,
                       workers=cfg.get("workers") if name == "imagefolder" else None)
    got = (bundle.num_classes, bundle.in_chans, bundle.img_size)
    want = (model_config["num_classes"], model_config["in_chans"], model_config["img_size"])
    if got != want:
        raise UsageError(f"data set {name} has (classes, channels, size) {got} but the "
                         f"checkpoint's model expects {want}")
    return bundle


def rng_state() -> dict:
    """This process's random generator states (python, numpy, torch CPU, current CUDA)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  *(float(v) if isinstance(v, float) else int(v) for v in np_state[2:])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
