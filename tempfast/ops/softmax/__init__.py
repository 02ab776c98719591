"""The temperature softmax and log-softmax, ``softmax(x / T)`` over one dimension.

``call.py`` checks and normalises the arguments and picks the route; ``op.py`` holds the
autograd (custom ops and the eager Function); ``torch_path.py`` and ``triton_path.py`` compute
the rows (Triton source: ``kernels/softmax.py``).
"""

from .call import SoftmaxCall, normalise, route, run

__all__ = ["SoftmaxCall", "normalise", "route", "run"]
