"""Test configuration shared by every test module.

Without a GPU the Triton kernels run under the Triton interpreter, which must be switched on
before ``tempfast.kernels`` is first imported; this file runs before any test module.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
