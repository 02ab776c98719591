"""Backend selection: environment variable, context manager, the interpreter requirement."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import tempfast
from tempfast import backend


def test_context_manager_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("TEMPFAST_BACKEND", "torch")
    assert backend.get_backend() == "torch"
    with tempfast.use_backend("triton"):
        assert backend.get_backend() == "triton"
        with tempfast.use_backend("auto"):
            assert backend.resolve(torch.device("cpu")) == "torch"
        assert backend.resolve(torch.device("cpu")) == "triton"
    assert backend.get_backend() == "torch"


def test_auto_uses_triton_on_cuda_and_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("TEMPFAST_BACKEND", raising=False)
    assert backend.resolve(torch.device("cpu")) == "torch"
    assert backend.resolve(torch.device("cuda")) == "triton"


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_forcing_triton_on_cpu_without_the_interpreter_fails_with_one_line():
    result = _run("import torch, tempfast\n"
                  "try:\n"
                  "    tempfast.softmax(torch.randn(2, 3))\n"
                  "except RuntimeError as e:\n"
                  "    print('ERR', e)\n", TEMPFAST_BACKEND="triton")
    assert result.returncode == 0, result.stderr
    assert "ERR backend 'triton' on cpu tensors needs TRITON_INTERPRET=1" in result.stdout


def test_environment_variable_selects_the_triton_kernels_under_the_interpreter():
    result = _run("import torch, tempfast\n"
                  "from tempfast.ops.softmax import op\n"
                  "x = torch.randn(3, 5)\n"
                  "print(op.impl_for(x).__name__)\n"
                  "print(float((tempfast.softmax(x, 2.0) - torch.softmax(x / 2, -1)).abs().max()))",
                  TEMPFAST_BACKEND="triton", TRITON_INTERPRET="1")
    assert result.returncode == 0, result.stderr
    name, err = result.stdout.split()
    assert name == "tempfast.ops.softmax.triton_path" and float(err) < 1e-6


def test_float64_always_takes_the_torch_path():
    from tempfast.ops import dispatch

    with tempfast.use_backend("triton"):
        assert not dispatch.runs_triton(torch.zeros(1, dtype=torch.float64))
        assert dispatch.runs_triton(torch.zeros(1, dtype=torch.float32))


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_info_command_reports_versions_and_backends(flag):
    result = subprocess.run([sys.executable, "-m", "tempfast", "info", *flag],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert torch.__version__ in result.stdout
    if flag:
        info = json.loads(result.stdout)
        assert info["tempfast"] == tempfast.__version__
        assert info["cpu_backend"] in ("torch", "triton")


@pytest.mark.parametrize(("name", "field", "message"), [
    ("bogus", "requested_backend", "TEMPFAST_BACKEND: unknown backend 'bogus'"),
    ("triton", "cpu_backend", "backend 'triton' on cpu tensors needs TRITON_INTERPRET=1"),
])
def test_info_reports_an_unusable_backend_request_instead_of_failing(capsys, monkeypatch, name,
                                                                      field, message):
    from tempfast.cli import main

    monkeypatch.setenv("TEMPFAST_BACKEND", name)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info[field].startswith("unavailable (") and message in info[field]


def test_unknown_backend_is_refused(monkeypatch):
    with pytest.raises(ValueError, match=r"^use_backend: unknown backend"), \
            tempfast.use_backend("cuda"):
        pass
    monkeypatch.setenv("TEMPFAST_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"^TEMPFAST_BACKEND: unknown backend"):
        tempfast.softmax(torch.randn(4, 10))
