"""``tempfast.token_logprobs``: per-token log-probabilities and entropy at a temperature, with
soft-capping (the layout of an op folder: ``tempfast/ops/README.md``)."""

from .call import TokenCall, normalise, route, run

__all__ = ["TokenCall", "normalise", "route", "run"]
