"""Find branches and computed addresses in AArch64 code with capstone.

:func:`scan` disassembles one function's bytes and returns its branches
(``bl``, ``b``, conditional branches, ``blr``/``br`` and their pointer-auth
forms) and, optionally, the addresses it computes with ``adr`` / ``adrp`` +
``add`` / ``adrp`` + ``ldr`` (how code takes the address of a function or of a
function-pointer table). In a relocatable object the encoded targets are
placeholders; the caller resolves them through the relocations instead.
"""

from __future__ import annotations

from dataclasses import dataclass

_COND = ("cbz", "cbnz", "tbz", "tbnz")
_INDIRECT_CALL = ("blr", "blraa", "blraaz", "blrab", "blrabz")
_INDIRECT_JUMP = ("br", "braa", "braaz", "brab", "brabz")
_RESET = ("bl", "ret", "retaa", "retab", "eret", "eretaa", "eretab") + _INDIRECT_CALL


@dataclass(slots=True)
class Branch:
    address: int
    mnemonic: str
    kind: str  # "bl", "b" (b, b.cond, cbz, tbz, ...), "blr", "br"
    target: int | None = None  # direct branches (as encoded)
    reg: str | None = None  # indirect branches


@dataclass(slots=True)
class AddrRef:
    address: int  # the instruction completing the computation
    target: int


_md = None


def _disassembler():
    global _md
    if _md is None:
        try:
            import capstone
        except ImportError as e:  # pragma: no cover - install problem
            from scopecheck.errors import InputError

            raise InputError("capstone is not installed: pip install capstone") from e
        _md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        _md.detail = False
        _md.skipdata = False
    return _md


def _imm(s: str) -> int | None:
    s = s.strip()
    if s.startswith("#"):
        s = s[1:]
    try:
        return int(s, 0)
    except ValueError:
        return None


def scan(code: bytes, base: int, track_addresses: bool = True) -> tuple[list[Branch], list[AddrRef]]:
    """Branches and computed addresses of ``code`` (loaded at ``base``).

    Undecodable words (literal pools, instructions capstone does not know) are
    skipped four bytes at a time.
    """
    md = _disassembler()
    branches: list[Branch] = []
    refs: list[AddrRef] = []
    regs: dict[str, int] = {}
    n = len(code)
    off = 0
    while off < n:
        last = off
        for addr, size, mn, ops in md.disasm_lite(code[off:], base + off):
            last = addr - base + size
            if mn[0] == "b" or mn in _COND:
                if mn == "bl":
                    branches.append(Branch(addr, mn, "bl", _imm(ops)))
                elif mn == "b" or mn.startswith("b."):
                    branches.append(Branch(addr, mn, "b", _imm(ops)))
                elif mn in _INDIRECT_CALL:
                    branches.append(Branch(addr, mn, "blr", None, ops.split(",")[0].strip()))
                elif mn in _INDIRECT_JUMP:
                    branches.append(Branch(addr, mn, "br", None, ops.split(",")[0].strip()))
                elif mn in _COND:
                    branches.append(Branch(addr, mn, "b", _imm(ops.rsplit(",", 1)[-1])))
                if mn in _RESET:
                    regs.clear()
                continue
            if mn in _COND:
                continue
            if not track_addresses:
                continue
            if mn in _RESET:
                regs.clear()
                continue
            if mn == "adrp" or mn == "adr":
                parts = ops.split(",")
                v = _imm(parts[-1]) if len(parts) == 2 else None
                if v is not None:
                    regs[parts[0].strip()] = v
                    if mn == "adr":
                        refs.append(AddrRef(addr, v))
                continue
            if mn == "add" and regs:
                parts = [p.strip() for p in ops.split(",")]
                if len(parts) == 3 and parts[1] in regs:
                    v = _imm(parts[2])
                    if v is not None:
                        t = regs[parts[1]] + v
                        refs.append(AddrRef(addr, t))
                        regs[parts[0]] = t
                        continue
            elif mn == "ldr" and regs and "[" in ops:
                dst, _, mem = ops.partition(",")
                mem = mem.strip()
                if mem.startswith("[") and mem.endswith("]"):
                    inner = [p.strip() for p in mem[1:-1].split(",")]
                    if inner[0] in regs:
                        v = _imm(inner[1]) if len(inner) == 2 else 0
                        if v is not None:
                            refs.append(AddrRef(addr, regs[inner[0]] + v))
                regs.pop(dst.strip(), None)
                continue
            if regs:
                dst = ops.split(",", 1)[0].strip()
                regs.pop(dst, None)
        if last >= n:
            break
        off = last + 4  # disasm_lite stopped at an undecodable word: skip it
        regs.clear()
    return branches, refs
