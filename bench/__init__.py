"""tempfast's benchmark suite: speed, memory and correctness against PyTorch and peer kernels.

Run ``pytest bench/ --benchmark-only`` (timings) or ``pytest bench/ --benchmark-disable``
(correctness checks only); render a saved ``--benchmark-json`` file with
``python -m bench.report results.json``.
"""
