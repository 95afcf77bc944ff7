"""A Coccinelle semantic patch (SmPL) that narrows hyp functions to ``struct kvm_cpu_context *``.

From a :class:`scopecheck.narrow.NarrowResult`: the functions that can take the vcpu's
context alone get their ``struct kvm_vcpu *`` parameter replaced by a
``struct kvm_cpu_context *``; in their bodies ``vcpu->arch.ctxt.X`` becomes ``ctxt->X``,
``&vcpu->arch.ctxt`` becomes ``ctxt``, and the kernel's context accessors used on that
vcpu take their context forms (``vcpu_gp_regs(vcpu)`` -> ``&ctxt->regs``,
``__vcpu_sys_reg(vcpu, r)`` -> ``ctxt_sys_reg(ctxt, r)``); every caller passes
``&E->arch.ctxt`` for the vcpu ``E`` it passed before, and prototypes follow.

A function is only emitted when the source shows that every use of its vcpu parameter is
one of those forms (or a hand-off to another narrowed function), so that the patch
compiles; the others are listed with the reason (an accessor without a context form, an
address taken, a name the host or the VHE hyp shares, ...). Apply with
``spatch --sp-file FILE --dir arch/arm64/kvm/hyp --include-headers --in-place`` plus the
headers that declare hyp functions (``arch/arm64/include/asm/kvm_hyp.h``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CTXT_TYPE = "struct kvm_cpu_context *"

#: kernel accessors taking the vcpu first, with the context form of the same expression:
#: (name, regex of the use on parameter V, SmPL minus, SmPL plus)
ACCESSORS = (
    ("vcpu_gp_regs", r"\bvcpu_gp_regs\s*\(\s*{v}\s*\)", "vcpu_gp_regs({v})", "(&{n}->regs)"),
    ("__vcpu_sys_reg", r"\b__vcpu_sys_reg\s*\(\s*{v}\s*,", "__vcpu_sys_reg({v}, R)", "ctxt_sys_reg({n}, R)"),
    # kvm_emulate.h's __always_inline vcpu_pc()/vcpu_cpsr() are exactly these on the context
    ("vcpu_pc", r"\bvcpu_pc\s*\(\s*{v}\s*\)", "vcpu_pc({v})", "((unsigned long *)&{n}->regs.pc)"),
    ("vcpu_cpsr", r"\bvcpu_cpsr\s*\(\s*{v}\s*\)", "vcpu_cpsr({v})", "((unsigned long *)&{n}->regs.pstate)"),
)
_DIRECT = (r"&\s*{v}\s*->\s*arch\s*\.\s*ctxt\b", r"\b{v}\s*->\s*arch\s*\.\s*ctxt\b")

HOST_DIRS = ("arch/arm64/kvm", "arch/arm64/kvm/vgic")  # *.c here call hyp only through kvm_call_hyp
SHARED_HEADERS = ("include/", "arch/arm64/include/")
NVHE = "arch/arm64/kvm/hyp/nvhe/"
VHE = "arch/arm64/kvm/hyp/vhe/"


@dataclass(slots=True)
class CocciPatch:
    text: str
    narrowed: list = field(default_factory=list)  # NarrowFunction
    skipped: list = field(default_factory=list)  # (NarrowFunction, reason)

    def summary(self) -> str:
        out = [f"{len(self.narrowed)} function(s) narrowed to {CTXT_TYPE}"]
        out += [f"  {f.function} ({f.file}:{f.line})" for f in self.narrowed]
        if self.skipped:
            out.append(f"{len(self.skipped)} kvm_cpu_context-only function(s) left out of the patch:")
            out += [f"  {f.function} ({f.file}:{f.line}): {why}" for f, why in self.skipped]
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------- reading the source

def _blank(text: str) -> str:
    """Comments and string/char literals replaced by spaces (offsets kept)."""
    def sp(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', sp, text, flags=re.S)


def _match(text: str, i: int, open_: str, close: str) -> int:
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return j
    return -1


def function_body(text: str, name: str, line: int) -> tuple[str, int] | None:
    """The blanked body ``{...}`` of the definition of ``name`` at ``line``, and its offset."""
    b = _blank(text)
    starts = [0]
    for m in re.finditer("\n", b):
        starts.append(m.end())
    if line < 1 or line > len(starts):
        return None
    for m in re.finditer(rf"\b{re.escape(name)}\s*\(", b[starts[line - 1]:]):
        p0 = starts[line - 1] + m.end() - 1
        p1 = _match(b, p0, "(", ")")
        if p1 < 0:
            return None
        rest = b[p1 + 1:]
        k = re.match(r"[\s\w()]*?\{", rest)
        if not k or ";" in rest[:k.end()]:
            return None
        o = p1 + 1 + k.end() - 1
        e = _match(b, o, "{", "}")
        return (b[o:e + 1], o) if e > 0 else None
    return None


def _split_args(s: str) -> list[tuple[str, int]]:
    """Top-level comma-separated arguments of ``(...)`` text (without the parens), with offsets."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            out.append((s[start:i], start))
            start = i + 1
    out.append((s[start:], start))
    return out


def remaining_use(body: str, v: str, narrowed_calls: dict) -> str | None:
    """The first use of parameter ``v`` the patch cannot rewrite (None: every use is rewritable).

    ``narrowed_calls``: name -> parameter index of the functions the patch narrows."""
    ve = re.escape(v)
    b = body
    for pat in _DIRECT + tuple(a[1] for a in ACCESSORS):
        b = re.sub(pat.format(v=ve), lambda m: " " * len(m.group(0)), b)
    for name, idx in narrowed_calls.items():
        for m in re.finditer(rf"\b{re.escape(name)}\s*\(", b):
            p0 = m.end() - 1
            p1 = _match(b, p0, "(", ")")
            if p1 < 0:
                continue
            args = _split_args(b[p0 + 1:p1])
            if idx < len(args) and args[idx][0].strip() == v:
                s = p0 + 1 + args[idx][1]
                b = b[:s] + " " * len(args[idx][0]) + b[s + len(args[idx][0]):]
    m = re.search(rf"\b{ve}\b", b)
    if m is None:
        return None
    snippet = " ".join(b[max(0, m.start() - 25):m.end() + 25].split())
    return snippet


# ---------------------------------------------------------------- selection

def _host_names(root: Path) -> str:
    parts = []
    for d in HOST_DIRS:
        for p in sorted((root / d).glob("*.c")):
            try:
                parts.append(p.read_text(errors="replace"))
            except OSError:
                pass
    return _blank("\n".join(parts))


def _vhe_names(root: Path) -> str:
    parts = []
    for p in sorted((root / VHE).glob("*.[ch]")):
        try:
            parts.append(p.read_text(errors="replace"))
        except OSError:
            pass
    return _blank("\n".join(parts))


def select(result, source_root: str | Path | None):
    """(narrowed [(fn, body-less info)], skipped [(fn, reason)]) for the kvm_cpu_context-only functions."""
    root = Path(source_root) if source_root else None
    kernel = root is not None and (root / "arch/arm64/kvm/hyp").is_dir()
    host = _host_names(root) if kernel else ""
    vhe = _vhe_names(root) if kernel else ""
    cands, skipped = {}, []
    texts: dict = {}
    for f in result.functions:
        if f.can_take != [CTXT_TYPE]:
            continue
        why = None
        if f.address_taken:
            why = "its address is taken (a function-pointer type would change)"
        elif not f.file or root is None or not (root / f.file).is_file():
            why = "source file not found"
        elif kernel and f.file.startswith(SHARED_HEADERS):
            why = "defined in a kernel header shared with the host"
        elif kernel and not f.file.startswith("arch/arm64/kvm/hyp/"):
            why = "defined outside arch/arm64/kvm/hyp"
        elif kernel and re.search(rf"\b{re.escape(f.function)}\b", host):
            why = "named by host code (arch/arm64/kvm/*.c)"
        elif kernel and f.file.startswith(NVHE) and re.search(rf"\b{re.escape(f.function)}\b", vhe):
            why = "the VHE hyp has a function of the same name"
        elif f.function in getattr(result, "duplicate_names", ()) or \
                any(g.function == f.function and g.key != f.key for g in result.functions):
            why = "hyp has several functions of this name"
        if why is None:
            if f.file not in texts:
                texts[f.file] = (root / f.file).read_text(errors="replace")
            body = function_body(texts[f.file], f.function, f.line or 0)
            if body is None:
                why = "definition not found at its line"
            else:
                cands[f.key] = (f, body[0])
                continue
        skipped.append((f, why))
    # a function is rewritable when every use of its vcpu is a context form or a hand-off to
    # another rewritable function: drop the others until nothing changes
    while True:
        calls = {f.function: f.param_index for f, _b in cands.values()}
        bad = {}
        for k, (f, body) in cands.items():
            use = remaining_use(body, f.param, calls)
            if use is not None:
                bad[k] = f"uses its vcpu where no context form exists: `{use}`"
        if not bad:
            break
        for k, why in bad.items():
            skipped.append((cands.pop(k)[0], why))
    narrowed = sorted((f for f, _b in cands.values()), key=lambda f: (f.file or "", f.line or 0))
    bodies = {f.key: b for f, b in cands.values()}
    skipped.sort(key=lambda t: (t[0].file or "", t[0].line or 0))
    return narrowed, bodies, skipped


# ---------------------------------------------------------------- SmPL

_HEADER = """\
// Generated by scopecheck narrow --emit-cocci: narrow hyp functions that need only the
// vcpu's context from struct kvm_vcpu * to struct kvm_cpu_context *.
// query: {query}; target: {target}
// Apply: spatch --sp-file THIS --dir arch/arm64/kvm/hyp --include-headers --in-place
//        and spatch --sp-file THIS --in-place arch/arm64/include/asm/kvm_hyp.h (prototypes)
// Rules match by function name: only names that are unique in hyp (nVHE and VHE) and unknown
// to host code are narrowed. Narrowed ({count}): {names}
"""


def _new_name(body: str, params) -> str:
    names = {p[0] for p in params}
    for n in ("ctxt", "vcpu_ctxt", "narrow_ctxt"):
        if n not in names and not re.search(rf"(?<![.>])\s*\b{n}\b", body):
            return n
    return "narrow_ctxt__"


def emit(result, source_root: str | Path | None = None) -> CocciPatch:
    root = source_root or getattr(result, "source_root", None)
    narrowed, bodies, skipped = select(result, root)
    names = ", ".join(f.function for f in narrowed) or "none"
    out = [_HEADER.format(query=result.query.id, target=Path(result.target).name, count=len(narrowed),
                          names=names)]
    # 1. callers pass &E->arch.ctxt (inside narrowed functions the body rules below finish the job)
    for n, f in enumerate(narrowed):
        i = f.param_index
        lst = f"expression list[{i}] ES;\n" if i else ""
        pre = "ES, " if i else ""
        out.append(f"// {f.function}: callers\n@narrow_call_{n}@\nexpression E;\n{lst}"
                   f"@@\n {f.function}({pre}\n- E\n+ &E->arch.ctxt\n  , ...)\n")
    # 2. the definitions: parameter and body
    for n, f in enumerate(narrowed):
        i = f.param_index
        v = f.param
        nn = _new_name(bodies[f.key], f.params)
        const = "const " if f.params[i][1].strip().startswith("const") else ""
        plist = f"parameter list[{i}] PS;\n" if i else ""
        pre = "PS, " if i else ""
        out.append(
            f"// {f.function} ({f.file}:{f.line}): needs {', '.join(sorted(f.needs)) or 'nothing'}\n"
            f"@narrow_def_{n}@\ntype T;\nsymbol {v};\n{plist}@@\n"
            f" T {f.function}({pre}\n- {const}struct kvm_vcpu *{v}\n+ {const}struct kvm_cpu_context *{nn}\n"
            f"  , ...) {{ ... }}\n")
        alts = [f"- &{v}->arch.ctxt\n+ {nn}", f"- {v}->arch.ctxt.fld\n+ {nn}->fld"]
        alts += [f"- {a[2].format(v=v)}\n+ {a[3].format(n=nn)}" for a in ACCESSORS]
        out.append(
            f"@narrow_body_{n} depends on narrow_def_{n}@\ntype T;\nsymbol {v};\nidentifier fld;\nexpression R;\n"
            f"@@\n T {f.function}(...) {{\n <...\n(\n"
            + "\n|\n".join(alts) + "\n)\n ...>\n }\n")
    # 3. prototypes
    for n, f in enumerate(narrowed):
        i = f.param_index
        const = "const " if f.params[i][1].strip().startswith("const") else ""
        plist = f"parameter list[{i}] PS;\n" if i else ""
        pre = "PS, " if i else ""
        nn = _new_name(bodies[f.key], f.params)
        out.append(f"@narrow_proto_{n}@\ntype T;\nidentifier v;\n{plist}parameter list PS2;\n@@\n"
                   f" T {f.function}({pre}\n- {const}struct kvm_vcpu *v\n+ {const}struct kvm_cpu_context *{nn}\n"
                   f"  , PS2);\n")
    return CocciPatch("\n".join(out), narrowed, skipped)
