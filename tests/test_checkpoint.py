"""tempfast.train.checkpoint: atomic saves, safe loads with one-line errors, model restore, RNG."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from tempfast.errors import UsageError
from tempfast.train.checkpoint import (
    FORMAT,
    atomic_write,
    load_checkpoint,
    restore_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tempfast.train.models import build_model

MODEL_CONFIG = {"name": "small_cnn", "num_classes": 10, "in_chans": 1, "img_size": 8,
                "mean": [0.3], "std": [0.4]}


def _state(model):
    return {"format": FORMAT, "model": model.state_dict(), "model_config": MODEL_CONFIG,
            "temperature": 8.0, "config": {"temp": 8.0}, "rng": [rng_state()]}


def test_save_load_restore_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8, (0.3,), (0.4,)).eval()
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(model))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temp file is left behind"
    ckpt = load_checkpoint(path)
    assert ckpt["temperature"] == 8.0 and ckpt["config"] == {"temp": 8.0}
    restored = restore_model(ckpt, "cpu")
    assert not restored.training
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(restored(x), model(x))


def test_a_vit_restores_with_its_recorded_patch_size_or_the_rule_of_older_checkpoints():
    """A checkpoint records the patch size; one written before it did (no ``patch_size`` in
    ``model_config``) was built with ``img_size // 8`` (3 px at 28 px) and restores so."""
    torch.manual_seed(0)
    config = {"name": "vit_tiny_patch16_224", "num_classes": 10, "in_chans": 1, "img_size": 28,
              "mean": [0.3], "std": [0.4]}
    x = torch.rand(2, 1, 28, 28)
    for patch, recorded in ((7, {"patch_size": 7}), (None, {"patch_size": None}), (3, {})):
        model = build_model(**config, patch_size=patch, strict=bool(recorded)).eval()
        ckpt = {"model": model.state_dict(), "model_config": {**config, **recorded}}
        assert torch.equal(restore_model(ckpt, "cpu")(x), model(x))


def test_failed_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, write)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    (b"", "unreadable or corrupt"),
    (b"\x00garbage" * 50, "unreadable or corrupt"),
    ("truncated", "unreadable or corrupt: not a zip archive"),
    (b"junk\n", "unreadable or corrupt: not a zip archive"),
    ("plain pickle", "unreadable or corrupt: not a zip archive"),
    ("foreign", "not a tempfast training checkpoint"),
])
def test_bad_checkpoints_are_one_line_usage_errors(tmp_path, content, match, recwarn):
    path = tmp_path / "ckpt.pt"
    if content == "plain pickle":
        path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    elif content == "truncated":
        save_checkpoint(path, _state(build_model("small_cnn", 10, 1, 8, (0.3,), (0.4,))))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=match) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    assert not recwarn.list, "the one line is all the user sees"


def test_checkpoint_with_code_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "hook": print}, path)
    with pytest.raises(UsageError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} is unreadable or corrupt: it holds more than "
                              "tensors and plain containers (")
    assert "GLOBAL print" in message, "names what the file holds"
    for advice in ("weights_only", "trust", "safe_globals", "\n", "\x1b"):
        assert advice not in message


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"format": FORMAT, "rng": [rng_state()]})
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    """The trainer's files get the mode ``open(path, "w")`` gives (issue 23: they were 0600,
    ``mkstemp``'s mode, whatever the umask)."""
    import os

    from tempfast.train.checkpoint import atomic_write_text

    saved = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}\n")
    finally:
        os.umask(saved)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == mode
