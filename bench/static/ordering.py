"""Memory ordering of the cooperative waits, read from the compiled PTX.

A spin-wait is only correct if each poll really goes to memory with acquire semantics (a
plain load may be served from L1, or hoisted out of the loop by the compiler, and then the
wait never ends or reads the partials too early), and if the partials a program stores are
ordered before its arrival at the row's counter (release semantics after a CTA barrier: one
thread arrives for the whole program). :func:`wait_violations` reads that from the PTX of one
kernel:

* a **wait loop** is an innermost loop (a backward branch to a label) whose branch predicate
  depends, through the registers defined inside the loop, on a global memory read inside the
  loop (a value passed through shared memory, as Triton broadcasts a scalar atomic's result,
  is followed to the register stored there);
* each such **poll** must be an ``atom`` / ``ld`` with ``.acquire`` or ``.acq_rel`` (or
  ``ld.volatile``), or a relaxed one followed by a ``fence`` before the loop's code that
  follows it;
* the **arrival**, the last ``atom`` before the loop, must have ``.release`` or ``.acq_rel``
  semantics (or a ``fence`` / ``membar`` between the program's last global store and it), with
  a ``bar.sync`` between that store and it.

The caller says how many wait loops the kernel has; a loop whose poll was hoisted out (a
plain load) is then missing and reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
_BRANCH = re.compile(r"^(?:@(!?)(%p\d+)\s+)?bra(?:\.uni)?\s+(\$L__BB\d+_\d+)")
_REGISTER = re.compile(r"%[a-z]+\d+")


@dataclass(frozen=True)
class _Instr:
    line: int
    text: str

    @property
    def opcode(self) -> str:
        body = self.text.split(None, 1)[1] if self.text.startswith("@") else self.text
        return body.split()[0] if body else ""

    @property
    def operands(self) -> list[str]:
        body = self.text.split(None, 1)[1] if self.text.startswith("@") else self.text
        parts = body.split(None, 1)
        return _REGISTER.findall(parts[1]) if len(parts) > 1 else []

    def defines(self) -> str | None:
        """The register this instruction writes (its first operand), if it writes one."""
        op = self.opcode
        if op.startswith(("st.", "bar", "bra", "fence", "membar", "ret", "red.")):
            return None
        ops = self.operands
        return ops[0] if ops else None

    def uses(self) -> list[str]:
        ops = self.operands
        return ops[1:] if self.defines() is not None else ops


def _instructions(ptx: str) -> tuple[list[_Instr], dict[str, int]]:
    instrs: list[_Instr] = []
    labels: dict[str, int] = {}
    for raw in ptx.splitlines():
        text = raw.split("//", 1)[0].strip().rstrip(";").strip()
        if not text or text.startswith((".", "{", "}")):
            continue
        m = _LABEL.match(text)
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        if text.startswith("$"):
            continue
        instrs.append(_Instr(len(instrs), re.sub(r"\s+", " ", text)))
    return instrs, labels


def _is_global_read(i: _Instr) -> bool:
    return i.opcode.startswith(("ld.global", "atom.global", "ld.volatile.global"))


def _acquires(i: _Instr) -> bool:
    parts = i.opcode.split(".")
    return "acquire" in parts or "acq_rel" in parts or "volatile" in parts


def _polls(loop: list[_Instr], predicate: str) -> list[_Instr]:
    """The global reads inside ``loop`` the branch ``predicate`` depends on."""
    defs: dict[str, list[_Instr]] = {}
    for i in loop:
        reg = i.defines()
        if reg:
            defs.setdefault(reg, []).append(i)
    shared_stores = [i for i in loop if i.opcode.startswith("st.shared")]
    seen: set[str] = set()
    todo = [predicate]
    polls: list[_Instr] = []
    while todo:
        reg = todo.pop()
        if reg in seen:
            continue
        seen.add(reg)
        for i in defs.get(reg, []):
            if _is_global_read(i):
                polls.append(i)
            elif i.opcode.startswith("ld.shared"):
                todo += [s.operands[-1] for s in shared_stores if s.operands]
            else:
                todo += i.uses()
    return polls


def wait_loops(ptx: str) -> list[dict]:
    """Every wait loop of the kernel: ``{"start", "end", "polls", "arrival", ...}`` with the
    instructions that decide it (see the module docstring)."""
    instrs, labels = _instructions(ptx)
    loops = []
    for i in instrs:
        m = _BRANCH.match(i.text)
        if m and m.group(3) in labels and labels[m.group(3)] <= i.line and m.group(2):
            loops.append((labels[m.group(3)], i.line, m.group(2)))
    innermost = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1]
                                               for o in loops)]
    found = []
    for start, end, predicate in innermost:
        polls = _polls(instrs[start:end + 1], predicate)
        if not polls:
            continue
        before = instrs[:start]
        atoms = [i for i in before if i.opcode.startswith("atom.")]
        arrival = atoms[-1] if atoms else None
        last_store = max((i.line for i in before if i.opcode.startswith("st.global")),
                         default=-1)
        between = instrs[last_store + 1:arrival.line] if arrival else []
        after = []
        for i in instrs[end + 1:]:
            if _is_global_read(i) or i.opcode.startswith("st.global"):
                break
            after.append(i)
        found.append({"start": start, "end": end, "polls": polls, "arrival": arrival,
                      "barrier_before_arrival": any(i.opcode.startswith("bar.sync")
                                                    for i in between),
                      "fence_before_arrival": any(i.opcode.startswith(("fence", "membar"))
                                                  for i in between),
                      "fence_after": any(i.opcode.startswith(("fence", "membar"))
                                         for i in after)})
    return found


def wait_violations(ptx: str, name: str, expected_waits: int = 1) -> list[str]:
    """One line per ordering fault of kernel ``name`` (empty: its waits are sound)."""
    out = []
    loops = wait_loops(ptx)
    if len(loops) != expected_waits:
        out.append(f"{name}: {len(loops)} wait loops polling memory, expected "
                   f"{expected_waits} (a plain load hoisted out of its loop leaves none)")
    for lp in loops:
        for poll in lp["polls"]:
            if not (_acquires(poll) or lp["fence_after"]):
                out.append(f"{name}: the wait polls with '{poll.opcode}' (neither acquire nor "
                           "volatile, no fence after the loop)")
        arrival = lp["arrival"]
        if arrival is None:
            out.append(f"{name}: no atomic arrival before the wait loop")
            continue
        parts = arrival.opcode.split(".")
        if not ("release" in parts or "acq_rel" in parts or lp["fence_before_arrival"]):
            out.append(f"{name}: the arrival '{arrival.opcode}' does not release the "
                       "partials (no .release / .acq_rel, no fence)")
        if not lp["barrier_before_arrival"]:
            out.append(f"{name}: no CTA barrier between the partials' stores and the arrival")
    return out
