"""Knowledge distillation (Hinton et al. 2015): ``T^2 KL(p_t || p_s)`` at temperature ``T``,
optionally mixed with the student's hard-label cross-entropy.

``call.py`` checks and normalises the arguments; ``op.py`` holds the custom op and its autograd
(the math); ``torch_path.py`` and ``triton_path.py`` compute the rows (Triton source:
``kernels/distillation.py``).
"""

from .call import DistillationCall, normalise, route, run

__all__ = ["DistillationCall", "normalise", "route", "run"]
