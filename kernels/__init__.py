"""Triton kernels of tempfast (installed as ``tempfast.kernels``).

Triton source and launch heuristics only: no autograd, no dispatch. Importing this package
decides, once, whether the kernels run compiled or under the Triton interpreter
(``TRITON_INTERPRET=1`` must be set before the first import).
"""
