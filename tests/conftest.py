"""Test configuration and fixtures shared by every test module.

Without a GPU the Triton kernels run under the Triton interpreter, which must be switched on
before ``tempfast.kernels`` is first imported; this file runs before any test module. Under
pytest-xdist each worker runs torch on one thread.

Fixtures:

* ``digits``: scikit-learn's 8x8 digits as [0, 1] images and a linear classifier trained on
  them (about 90% test accuracy): ``digits.model()`` a fresh copy, ``digits.test()`` the test
  images as a bundle, ``digits.batch(n)`` the first ``n`` test images and labels,
  ``digits.tensors()`` all images and labels, ``digits.n_train`` the training split.
"""

import copy
import functools
import os

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist each worker owns one core: torch's intra-op threads (one per core by
# default) would otherwise make the workers' ops wait on each other's descheduled threads.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    torch.set_num_threads(1)

from ._util import TensorBundle


class Digits:
    """Real data and a real model for the attack, masking and evaluation tests."""

    n_train = 1400

    @functools.cached_property
    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
        return x, torch.tensor(d.target)

    @functools.cached_property
    def _trained(self) -> nn.Module:
        x, y = self._data
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(150):
            loss = nn.functional.cross_entropy(model(x[:self.n_train]), y[:self.n_train])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._data

    def model(self) -> nn.Module:
        """A fresh copy of the trained linear classifier."""
        return copy.deepcopy(self._trained)

    def test(self) -> TensorBundle:
        x, y = self._data
        return TensorBundle(x[self.n_train:], y[self.n_train:])

    def batch(self, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._data
        return x[self.n_train:self.n_train + n], y[self.n_train:self.n_train + n]


@pytest.fixture(scope="session")
def digits() -> Digits:
    return Digits()
