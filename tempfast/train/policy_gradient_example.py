"""Policy-gradient fine-tuning with a sampling temperature: how to use
:func:`tempfast.token_logprobs` (log-probabilities and the entropy bonus at the temperature the
sampler used) in an RL loop.

Run::

    python -m tempfast.train.policy_gradient_example      # about 5 s on one CPU core

The task has a reward anyone can check: after a random first token ``s`` from a vocabulary of
``V`` tokens, the model must write ``s + 1, s + 2, ...`` (mod ``V``); a sequence's reward is
the share of its tokens that are right. The policy is a small autoregressive GRU language
model, untrained at the start.

Each step:

1. **The sampler** (plain PyTorch, no gradient, as an inference engine would run it) draws a
   batch of sequences token by token from ``softmax(logits / T)`` with ``torch.multinomial``
   and records the log-probability of every token it drew.
2. **The trainer** runs the model over the sampled sequences (teacher forcing) and calls
   ``tempfast.token_logprobs(logits, tokens, T, return_entropy=True)`` at the same ``T``:
   per-token log-probabilities and entropies, one read of the logits. At the first step the
   policy has not moved, so the ratio ``exp(logp_trainer - logp_sampler)`` must be 1: the
   example checks it (max ``|ratio - 1|`` printed) -- the check that catches a trainer whose
   temperature differs from the sampler's, or an entropy taken before dividing by ``T``.
3. REINFORCE with a baseline (the batch's mean reward) and an entropy bonus:
   ``loss = -mean(A * logp) - beta * mean(entropy)``, one Adam step.

Output: a header, the first step's ratio check, the mean reward every ``--log-every`` steps,
and a last line ``reward <first> -> <last>``; exit 0. Exit 1 if the ratio check fails; bad
flags: one line, exit 2; Ctrl-C: one line, exit 130.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import Tensor, nn

import tempfast

PROG = "python -m tempfast.train.policy_gradient_example"
RATIO_TOLERANCE = 1e-4  # |exp(logp_trainer - logp_sampler) - 1| at the first step


class TinyLM(nn.Module):
    """An autoregressive language model: embedding, one GRU layer, the output head."""

    def __init__(self, vocab: int, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.gru = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits ``(B, S, V)`` of the next token after each of ``tokens (B, S)``."""
        out, state = self.gru(self.embed(tokens), state)
        return self.head(out), state


def reward(tokens: Tensor, vocab: int) -> Tensor:
    """The share of tokens after the first that follow their predecessor by one (mod ``V``):
    ``(B,)`` in ``[0, 1]``."""
    right = tokens[:, 1:] == (tokens[:, :-1] + 1) % vocab
    return right.float().mean(1)


@torch.no_grad()
def sample(model: TinyLM, first: Tensor, length: int, temperature: float,
           gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The sampler: ``(tokens (B, 1 + length), logp (B, length))``, each token drawn from
    ``softmax(logits / T)`` with ``torch.multinomial`` and its log-probability recorded."""
    tokens, logps = [first], []
    state = None
    current = first[:, None]
    for _ in range(length):
        logits, state = model(current, state)
        probs = torch.softmax(logits[:, -1] / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=gen)
        logps.append(torch.log(probs.gather(1, nxt))[:, 0])
        tokens.append(nxt[:, 0])
        current = nxt
    return torch.stack(tokens, 1), torch.stack(logps, 1)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="REINFORCE with token_logprobs at the "
                                "sampling temperature, on a task with a checkable reward")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--length", type=int, default=8, help="tokens generated after the first")
    p.add_argument("--temp", type=float, default=0.8, help="the sampling temperature")
    p.add_argument("--entropy-bonus", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a run of seconds (tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.log_every = 60, 10
    for name in ("steps", "batch_size", "vocab", "length", "log_every"):
        if getattr(args, name) < 1 or (name == "vocab" and args.vocab < 2):
            p.error(f"--{name.replace('_', '-')}: too small ({getattr(args, name)})")
    if not args.temp > 0 or args.temp == float("inf"):
        p.error(f"--temp: must be finite and > 0, got {args.temp}")
    return args


def train(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = TinyLM(args.vocab)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"{PROG}: vocab {args.vocab}, {args.length} tokens per sequence, batch "
          f"{args.batch_size}, T {args.temp}, {args.steps} steps")
    start, rewards = time.time(), []
    for step in range(1, args.steps + 1):
        first = torch.randint(0, args.vocab, (args.batch_size,), generator=gen)
        tokens, sampler_logp = sample(model, first, args.length, args.temp, gen)
        logits, _ = model(tokens[:, :-1])
        logp, entropy = tempfast.token_logprobs(logits, tokens[:, 1:], args.temp,
                                                return_entropy=True)
        if step == 1:
            gap = (torch.exp(logp.detach() - sampler_logp) - 1).abs().max().item()
            print(f"step 1  trainer / sampler probability ratio: max |ratio - 1| = {gap:.2e}")
            if not gap < RATIO_TOLERANCE:
                print(f"{PROG}: the trainer's log-probabilities differ from the sampler's "
                      f"(tolerance {RATIO_TOLERANCE})", file=sys.stderr)
                return 1
        r = reward(tokens, args.vocab)
        advantage = (r - r.mean())[:, None]
        loss = -(advantage * logp).mean() - args.entropy_bonus * entropy.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rewards.append(r.mean().item())
        if step % args.log_every == 0 or step == args.steps:
            recent = rewards[-args.log_every:]
            print(f"step {step}  reward {sum(recent) / len(recent):.3f}  entropy "
                  f"{entropy.mean().item():.3f}  ({time.time() - start:.0f} s)")
    window = min(args.log_every, len(rewards))
    first_r, last_r = sum(rewards[:window]) / window, sum(rewards[-window:]) / window
    print(f"reward {first_r:.3f} -> {last_r:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and train; returns the exit status."""
    args = _parse(argv)
    try:
        return train(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
