"""Provenance symbols and their whole-program resolution, shared by both doors.

Whose memory a pointer designates: ``"host"`` (an address the host handed to hyp), ``"hyp"``
(hyp's own memory) or None (not known). Each door gives every access a *symbolic* provenance
in one vocabulary: ``"host"``, ``"hyp"``, None, ``["p", i]`` (parameter i of this function:
for the binary door, the value of register x_i at the function's entry), ``["ld", memory
symbol, "S.f"]`` (a pointer loaded from field f declared in struct S of that memory) and
``["meet", [symbols]]``; and records, per function, a :class:`ProvSummary` (its direct calls'
argument symbols and the pointers it stores into fields). :func:`resolve` then solves the whole
program: a parameter's provenance is the meet over all its call sites, a hyp field's the meet
of what is stored into it, iterated to a fixpoint.

The source door (:mod:`scopecheck.source.provenance`) and the reconcile stage (for the binary
door's symbols) both import this module; it imports neither door. Plain Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

#: struct types only hyp ever has: a pointer to one is hyp-owned whatever its origin
HYP_TYPES = ("pkvm_hyp_vcpu", "pkvm_hyp_vm")
#: fields of hyp structs that hold host addresses (S.f, S the struct that declares f)
HOST_FIELDS = ("pkvm_hyp_vcpu.host_vcpu", "pkvm_hyp_vm.host_kvm")
#: functions returning their argument's address translated (kern_hyp_va and friends)
PASS_CALLS = ("__kern_hyp_va", "kern_hyp_va", "__hyp_va")
#: a context whose general-purpose registers hold host values: its name contains this
HOST_CTXT = "host_ctxt"
TOP = "top"  # recursion guard: no information yet (ignored by meet)
MAX_ROUNDS = 12


@dataclass(slots=True)
class ProvSummary:
    """What one function says about provenance, in symbolic form (JSON-safe lists).

    ``accesses``: one symbol per field access the walker recorded for this function, in order;
    ``calls``: ``[callee name, [symbol per argument]]``; ``stores``: ``["S.f", memory symbol,
    value symbol]`` for pointers (and integers) written into fields; ``nparams``: parameter count.
    Symbols: ``"host"``, ``"hyp"``, None, ``["p", i]``, ``["ld", memory symbol, "S.f"]``,
    ``["meet", [symbols]]``.
    """

    function: tuple
    nparams: int = 0
    accesses: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    stores: list = field(default_factory=list)


# ---------------------------------------------------------------- symbols

def _key(s) -> str:
    return json.dumps(s, sort_keys=True)


def meet(syms) -> object:
    """Combine the provenance of several definitions: equal -> that, concrete and different -> None."""
    vals, seen = [], set()
    for s in syms:
        if s == TOP:
            continue
        if isinstance(s, list) and s and s[0] == "meet":
            inner = s[1]
        else:
            inner = [s]
        for x in inner:
            k = _key(x)
            if k not in seen:
                seen.add(k)
                vals.append(x)
    if not vals:
        return TOP
    if len(vals) == 1:
        return vals[0]
    if any(v is None for v in vals) or all(isinstance(v, str) for v in vals):
        return None
    return ["meet", vals]


def concrete(s) -> str | None:
    return s if s in ("host", "hyp") else None


# ---------------------------------------------------------------- whole-program resolution

def resolve(pairs, address_taken=(), seeds=HOST_FIELDS) -> dict:
    """Set ``provenance`` on the accesses of every (ProvSummary, [FieldAccess, ...]) pair.

    ``address_taken``: names of functions whose address is taken (their parameters come from
    an unknown caller). Returns ``{"params": {...}, "host_fields": [...], "rounds": n}``.
    """
    pairs = [(s, accs) for s, accs in pairs if s is not None]
    by_name: dict[str, list] = {}
    for s, _ in pairs:
        by_name.setdefault(s.function[0], []).append(s)
    taken = set(address_taken)
    params: dict[str, list] = {n: [None] * max(x.nparams for x in ss) for n, ss in by_name.items()}
    fields_: dict[str, object] = {}

    def res(sym, fn, depth=0):
        if depth > 32:
            return None
        if sym is None or sym == TOP:
            return None
        if isinstance(sym, str):
            return sym
        tag = sym[0]
        if tag == "p":
            ps = params.get(fn)
            return ps[sym[1]] if ps and sym[1] < len(ps) else None
        if tag == "ld":
            if sym[2] in seeds:
                return "host"
            b = res(sym[1], fn, depth + 1)
            if b == "host":
                return "host"
            if b == "hyp":
                v = fields_.get(sym[2], "hyp")
                return v
            return None
        if tag == "meet":
            m = meet([res(x, fn, depth + 1) for x in sym[1]])
            return None if m == TOP else m
        return None

    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        # parameters: the meet over every call site
        incoming: dict[str, list[list]] = {n: [[] for _ in ps] for n, ps in params.items()}
        for s, _ in pairs:
            for callee, args in s.calls:
                if callee not in incoming:
                    continue
                slots = incoming[callee]
                for i, a in enumerate(args[:len(slots)]):
                    slots[i].append(res(a, s.function[0]))
        new_params = {}
        for n, slots in incoming.items():
            new_params[n] = [None if (n in taken or not v) else
                             (lambda m: None if m == TOP else m)(meet(v)) for v in slots]
        # fields of hyp memory: the meet over every store
        stores: dict[str, list] = {}
        for s, _ in pairs:
            for key, mem, val in s.stores:
                if res(mem, s.function[0]) == "hyp":
                    stores.setdefault(key, []).append(res(val, s.function[0]))
        new_fields = {k: (None if (m := meet(v)) == TOP else m) for k, v in stores.items()}
        if new_params == params and new_fields == fields_:
            break
        params, fields_ = new_params, new_fields
    for s, accs in pairs:
        for a, sym in zip(accs, s.accesses):
            a.provenance = res(sym, s.function[0])
    host_fields = sorted(set(seeds) | {k for k, v in fields_.items() if v == "host"})
    return {"params": {n: p for n, p in params.items() if any(x is not None for x in p)},
            "host_fields": host_fields, "rounds": rounds}
