"""Class-parallel cross-entropy and linear head: the classes split across the ranks of a
``torch.distributed`` process group (the ``process_group=`` route of
:mod:`tempfast.ops.cross_entropy` and :mod:`tempfast.ops.linear_cross_entropy`).

``call.py`` checks the group, learns the ranks' class layout and runs the autograd of
``op.py``; ``shard.py`` holds the math and the two all-reduces. No kernel of its own: the
shard math runs as PyTorch ops on every backend.
"""

from .call import argmax, check_group, check_start, route, run
from .shard import ShardLayout, shard_layout

__all__ = ["ShardLayout", "argmax", "check_group", "check_start", "route", "run",
           "shard_layout"]
