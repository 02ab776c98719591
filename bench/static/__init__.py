"""The static cost model: GPU performance read from the compiled kernels, without a GPU.

``python -m bench.static`` runs the headline cases through the public ops with every Triton
launch intercepted (:mod:`~bench.static.record`), compiles each launch for sm_90a and sm_80
with the JIT's own specialisation and reads registers, spills, shared memory, SASS loops and
access widths (:mod:`~bench.static.compile`), models HBM traffic and time on H100 / H200
(:mod:`~bench.static.model`), counts host-side torch ops and times host overhead
(:mod:`~bench.static.host`), runs the same model over a plain copy and Liger-Kernel
(:mod:`~bench.static.peers`) and writes ``bench/results/static-<date>.{json,md}``
(:mod:`~bench.static.report`). :mod:`~bench.static.budgets` holds the checks CI asserts.
"""
