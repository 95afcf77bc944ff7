"""DWARF location expressions, reduced to what the binary access analysis needs.

A variable whose type is a pointer to a root struct tells us, for a pc range,
which register holds that pointer. Only these shapes are used:

* ``DW_OP_regN`` / ``DW_OP_regx N``: register N *is* the pointer;
* a lone ``DW_OP_bregN c`` (:func:`mem_slot`): the pointer is *stored* at ``xN + c``, so a
  load from there yields it (``DECLARE_REG(struct kvm_vcpu *, vcpu, host_ctxt, 1)``);
* ``DW_OP_bregN c [DW_OP_plus_uconst k | DW_OP_constXu k DW_OP_plus/minus] DW_OP_stack_value``:
  the pointer's value is ``xN + c (+/- k)``, so xN points ``-(c +/- k)`` bytes into the
  pointed-to struct (what GCC says for ``container_of`` results and ``&vcpu->arch``).

Everything else (memory locations, ``DW_OP_entry_value``, ``DW_OP_fbreg`` stack
slots, pieces) yields None: the analysis then relies on its own dataflow.
"""

from __future__ import annotations

from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.dwarf.locationlists import BaseAddressEntry, LocationEntry, LocationParser

_parsers: dict = {}


def _parse(expr, structs):
    """The operations of a DWARF expression (parser cached per structs), None if unparsable."""
    p = _parsers.get(id(structs))
    if p is None:
        p = _parsers[id(structs)] = (DWARFExprParser(structs), structs)
    try:
        return p[0].parse_expr(expr)
    except Exception:
        return None


def parses(expr: bytes | list, structs) -> bool:
    """True when the expression is well-formed DWARF (whatever its shape)."""
    return _parse(expr, structs) is not None


def reg_value(expr: bytes | list, structs) -> tuple[int, int] | None:
    """(register number 0..30, byte delta d) with ``pointer == x<reg> + d``, or None."""
    ops = _parse(expr, structs)
    if ops is None:
        return None
    if not ops:
        return None
    first = ops[0].op_name
    if len(ops) == 1:
        if first.startswith("DW_OP_reg") and first != "DW_OP_regx":
            n = _num(first[9:])
            return (n, 0) if n is not None and n <= 30 else None
        if first == "DW_OP_regx" and ops[0].args and ops[0].args[0] <= 30:
            return (ops[0].args[0], 0)
        return None
    if not first.startswith("DW_OP_breg") or first == "DW_OP_bregx" or ops[-1].op_name != "DW_OP_stack_value":
        return None
    n = _num(first[10:])
    if n is None or n > 30:
        return None
    d = ops[0].args[0] if ops[0].args else 0
    mid = ops[1:-1]
    if not mid:
        return (n, d)
    if len(mid) == 1 and mid[0].op_name == "DW_OP_plus_uconst":
        return (n, d + mid[0].args[0])
    if len(mid) == 2 and mid[0].op_name.startswith(("DW_OP_const", "DW_OP_lit")) \
            and mid[1].op_name in ("DW_OP_plus", "DW_OP_minus"):
        k = mid[0].args[0] if mid[0].args else _num(mid[0].op_name[9:])
        if k is None:
            return None
        return (n, d + k if mid[1].op_name == "DW_OP_plus" else d - k)
    return None


def mem_slot(expr: bytes | list, structs) -> tuple[int, int] | None:
    """(register 0..30, displacement c) when the location is the memory at ``x<reg> + c``
    (a lone ``DW_OP_bregN c``: the variable lives in that slot), else None."""
    ops = _parse(expr, structs)
    if ops is None:
        return None
    if len(ops) != 1 or not ops[0].op_name.startswith("DW_OP_breg") or ops[0].op_name == "DW_OP_bregx":
        return None
    n = _num(ops[0].op_name[10:])
    if n is None or n > 30:
        return None
    return (n, ops[0].args[0] if ops[0].args else 0)


def _num(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


class Locations:
    """Location attributes of DIEs -> [(lo, hi, expr bytes)] (hi exclusive); None scope = whole scope."""

    def __init__(self, dwarf):
        self.dwarf = dwarf
        self._parser = None
        self.errors = 0  # location lists that could not be parsed (a form or encoding not understood)

    def _p(self):
        if self._parser is None:
            self._parser = LocationParser(self.dwarf.location_lists())
        return self._parser

    def entries(self, die, attr) -> list[tuple[int | None, int | None, bytes]]:
        """[(lo, hi, expr)]: lo/hi None when the expression holds over the whole scope."""
        form = attr.form
        if form in ("DW_FORM_exprloc", "DW_FORM_block1", "DW_FORM_block2", "DW_FORM_block4", "DW_FORM_block"):
            return [(None, None, bytes(attr.value))]
        ver = die.cu.header["version"]
        try:
            if not LocationParser.attribute_has_location(attr, ver):
                return []
            ll = self._p().parse_from_attribute(attr, ver, die)
        except Exception:
            self.errors += 1
            return []
        if not isinstance(ll, list):
            return [(None, None, bytes(ll.loc_expr))] if hasattr(ll, "loc_expr") else []
        top = die.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
        base = top.value if top is not None else 0
        out = []
        for e in ll:
            if isinstance(e, BaseAddressEntry):
                base = e.base_address
                continue
            if not isinstance(e, LocationEntry):
                continue
            if getattr(e, "is_absolute", False):
                lo, hi = e.begin_offset, e.end_offset
            else:
                lo, hi = base + e.begin_offset, base + e.end_offset
            if hi > lo:
                out.append((lo, hi, bytes(e.loc_expr)))
        return out
