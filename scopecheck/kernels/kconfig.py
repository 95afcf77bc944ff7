"""Resolve what an analysis build needs against the tree's own Kconfig (kconfiglib).

scopecheck's configs are *intents*: "KVM on", "a PL011 console", "an
initramfs", "full debug info", "BTF if possible". Whether an option sticks
depends on the tree (5.10's KVM needs NET, 5.x's DEBUG_INFO is set by hand,
6.x's by a DWARF-version choice, some trees make DWARF 5 exclude BTF) and
on the toolchain (``$(cc-option ...)``, ``AS_IS_LLVM``, ``PAHOLE_VERSION``).
This module loads the tree's Kconfig with kconfiglib in the environment
kbuild itself exports (captured from ``make``), starts from the base
``.config`` kbuild made (``tinyconfig``, ``defconfig`` or the user's FILE)
and computes the assignments that make each intent stick, adding the
dependencies the tree requires::

    env = kbuild_env(tree, ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"])
    kconf = load_kconfig(tree, env)
    res = resolve(kconf, base_config, intents_from_fragment(text), debug="prefer-dwarf5", btf=True)
    res.fragment_text()      # merged with merge_config.sh, then `make olddefconfig`
    res.choices              # ["debug info: DWARF 5", "BTF: yes", "added CONFIG_NET=y (needed by CONFIG_KVM)"]
    verify(res, final_config)   # what olddefconfig did differently from the prediction

Debug-info policy (``debug="prefer-dwarf5"``): DWARF 5 with BTF, else
DWARF 4 with BTF (the tree's DWARF 5 excludes BTF, or pahole is too old for
DWARF 5), else DWARF 5 without BTF, else DWARF 4, else the toolchain's
default version; never reduced or split. ``debug="any"`` (a user's FILE)
keeps the FILE's version when it already has full debug info, and only
turns on what the analysis needs.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

from scopecheck.errors import ScopecheckError

__all__ = [
    "Intent",
    "Resolution",
    "KconfigFailed",
    "Unresolvable",
    "kbuild_env",
    "load_kconfig",
    "intents_from_fragment",
    "resolve",
    "verify",
]

#: Sections of a fragment (``# --- name: ...``) whose options must stick (else the build stops).
REQUIRED_SECTIONS = ("console", "userspace", "platform", "kvm")
#: Sections the resolver decides itself (the debug-info policy) instead of taking literally.
POLICY_SECTIONS = ("debug info", "btf")
#: Options without which there is nothing to analyse, whatever the config.
ALWAYS_REQUIRED = ("ARM64", "KVM", "DEBUG_INFO")

MAX_DEPTH = 16


class KconfigFailed(ScopecheckError):
    """The tree's Kconfig could not be loaded (a $(error-if ...) of the toolchain check, a syntax kconfiglib lacks)."""


class Unresolvable(ScopecheckError):
    """A required option cannot be made to stick in this tree with this toolchain."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = tuple(missing)


@dataclass(frozen=True)
class Intent:
    name: str  # without CONFIG_
    value: str  # "y", "n", or a raw string/int value ('"..."', '0x10')
    section: str  # fragment section ("console", "kvm", ...), "" before the first
    required: bool


@dataclass
class Resolution:
    assignments: dict[str, str] = field(default_factory=dict)  # NAME -> value, the fragment to merge
    debug_info: str = ""  # "DWARF 5", "DWARF 4", "toolchain default"
    btf: bool = False
    choices: list[str] = field(default_factory=list)  # one human line each
    added: dict[str, str] = field(default_factory=dict)  # dependencies added: NAME -> "y (needed by X)"
    dropped: list[str] = field(default_factory=list)  # optional intents that cannot stick, with why
    predicted: dict[str, str] = field(default_factory=dict)  # NAME -> "y"/"m"/"n" after resolution

    def fragment_text(self) -> str:
        lines = ["# scopecheck: resolved against this tree's Kconfig"]
        lines += [f"#   {c}" for c in self.choices]
        for name, v in self.assignments.items():
            lines.append(f"# CONFIG_{name} is not set" if v == "n" else f"CONFIG_{name}={v}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"debug_info": self.debug_info, "btf": self.btf, "choices": list(self.choices),
                "added": dict(self.added), "dropped": list(self.dropped)}


# --------------------------------------------------------------------------- the kbuild environment

#: Variables kbuild exports that a Kconfig may read ($(CC), $(CLANG_FLAGS), $(srctree), ...).
_ENV_PROBE = "scopecheck-kbuild-envconfig"


def kbuild_env(tree: Path, make_vars: Sequence[str], env: Optional[dict] = None, timeout: int = 300) -> dict[str, str]:
    """The environment kbuild gives ``scripts/kconfig/conf`` for ``make <make_vars> O=...`` on ``tree``.

    Captured by running ``make`` with an extra ``%config`` target (``--eval``),
    so CC, LD, CLANG_FLAGS, CC_VERSION_TEXT, PAHOLE, srctree, ... are exactly
    kbuild's for this tree and these variables.
    """
    base = dict(env if env is not None else os.environ)
    with tempfile.TemporaryDirectory(prefix="scopecheck-kenv-") as tmp:
        dump = Path(tmp) / "env"
        out = Path(tmp) / "o"
        out.mkdir()
        cmd = ["make", "-s", "-C", str(tree), f"O={out}", *make_vars,
               f"--eval={_ENV_PROBE}: ; @env -0 > {dump}", _ENV_PROBE]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=base, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KconfigFailed(f"cannot run make to read kbuild's environment: {e}") from None
        if not dump.is_file():
            err = [l for l in (r.stderr or "").splitlines() if "overriding recipe" not in l
                   and "ignoring old recipe" not in l]
            raise KconfigFailed(f"cannot read kbuild's environment from {tree}: "
                                f"{(err or ['make failed'])[0].strip()}")
        data = dump.read_bytes().decode(errors="replace")
    out_env = {}
    for item in data.split("\0"):
        if "=" in item:
            k, v = item.split("=", 1)
            out_env[k] = v
    return out_env


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_kconfig(tree: Path, env: dict[str, str]):
    """The tree's Kconfig parsed by kconfiglib in kbuild's environment (``$(shell ...)`` checks run now)."""
    import kconfiglib

    class _Kconfig(kconfiglib.Kconfig):
        # kconfiglib 14.1 predates the bare `modules` keyword (kernel 5.19+; it was `option modules`)
        def _tokenize(self, s):
            if s.strip() == "modules":
                s = s.replace("modules", "option modules", 1)
            return super()._tokenize(s)

    env = dict(env)
    env.setdefault("srctree", str(tree))
    env.setdefault("ARCH", "arm64")
    env.setdefault("SRCARCH", "arm64")
    try:
        with _environ(env):
            return _Kconfig(str(Path(tree) / "Kconfig"), warn=False, warn_to_stderr=False)
    except kconfiglib.KconfigError as e:
        msg = " ".join(str(e).split())
        raise KconfigFailed(f"cannot load {tree}/Kconfig: {msg}") from None


# --------------------------------------------------------------------------- intents


def intents_from_fragment(text: str) -> list[Intent]:
    """The options of a fragment, with the section (``# --- name: ...`` / ``# --- name ---``) each is in."""
    out, section = [], ""
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"#\s*---\s*([^:(]+?)\s*(?::|\(|---)", s)
        if m:
            section = m.group(1).strip().lower()
            continue
        m = re.match(r"CONFIG_([A-Za-z0-9_]+)=(.*)$", s)
        if m:
            name, value = m.group(1), m.group(2)
        else:
            m = re.match(r"#\s*CONFIG_([A-Za-z0-9_]+) is not set$", s)
            if not m:
                continue
            name, value = m.group(1), "n"
        req = section in REQUIRED_SECTIONS or name in ALWAYS_REQUIRED
        out.append(Intent(name, value, section, req))
    return out


# --------------------------------------------------------------------------- the resolver


class _Resolver:
    def __init__(self, kconf):
        import kconfiglib

        self.k = kconf
        self.kl = kconfiglib
        self.added: dict[str, str] = {}
        self._visiting: set = set()
        self._stack: list[str] = []

    # ---- state snapshots (try one way to satisfy an expression, undo if it fails)

    def snapshot(self):
        syms = {s: s.user_value for s in self.k.unique_defined_syms}
        choices = {c: (c.user_value, c.user_selection) for c in self.k.unique_choices}
        return syms, choices, dict(self.added)

    def restore(self, snap) -> None:
        syms, choices, added = snap
        for s, v in syms.items():
            if s.user_value != v and s.choice is None:
                if v is None:
                    s.unset_value()
                else:
                    s.set_value(v)
        for c, (v, sel) in choices.items():
            if c.user_value != v or c.user_selection is not sel:
                c.unset_value()
                if v is not None:
                    c.set_value(v)
                if sel is not None:
                    sel.set_value(2)
        self.added = added

    # ---- helpers

    def sym(self, name: str):
        s = self.k.syms.get(name)
        return s if s is not None and s.nodes else None

    def describe(self, expr) -> str:
        return self.kl.expr_str(expr)

    def _set(self, sym, val: int) -> None:
        sym.set_value(val if sym.orig_type in (self.kl.BOOL, self.kl.TRISTATE) else ("y" if val else "n"))
        self._note_added(sym.name, "n" if val == 0 else "m" if val == 1 else "y")

    def _note_added(self, name: str, value: str) -> None:
        if len(self._stack) > 1 and self._stack[0] != name:
            self.added.setdefault(name, f"{value} (needed by CONFIG_{self._stack[0]})")

    # ---- make expressions true / false

    def satisfy(self, expr, depth: int) -> Optional[str]:
        """Make ``expr`` evaluate to y; None on success, else why not."""
        kl = self.kl
        if self.kl.expr_value(expr) == 2:
            return None
        if isinstance(expr, kl.Symbol):
            if expr.is_constant:
                return f"{expr.name} is constant"
            return self.want(expr, 2, depth + 1)
        if isinstance(expr, kl.Choice):
            return self.want_choice(expr, depth + 1)
        op = expr[0]
        if op == kl.AND:
            return self.satisfy(expr[1], depth) or self.satisfy(expr[2], depth)
        if op == kl.OR:
            why = []
            for sub in (expr[1], expr[2]):
                snap = self.snapshot()
                err = self.satisfy(sub, depth)
                if err is None:
                    return None
                self.restore(snap)
                why.append(err)
            return f"needs {self.describe(expr)} ({'; '.join(why)})"
        if op == kl.NOT:
            return self.falsify(expr[1], depth)
        if op == kl.EQUAL and isinstance(expr[2], kl.Symbol) and expr[2].is_constant \
                and expr[2].name in ("y", "n", "m") and isinstance(expr[1], kl.Symbol) and not expr[1].is_constant:
            return self.want(expr[1], {"y": 2, "m": 1, "n": 0}[expr[2].name], depth + 1)
        return f"needs {self.describe(expr)}, which this tree/toolchain does not meet ({self.values(expr)})"

    def falsify(self, expr, depth: int) -> Optional[str]:
        """Make ``expr`` evaluate to n."""
        kl = self.kl
        if kl.expr_value(expr) == 0:
            return None
        if isinstance(expr, kl.Symbol):
            if expr.is_constant:
                return f"{expr.name} is constant"
            return self.want(expr, 0, depth + 1)
        if isinstance(expr, kl.Choice):
            return f"choice {expr.name or ''} cannot be switched off"
        op = expr[0]
        if op == kl.AND:
            why = []
            for sub in (expr[1], expr[2]):
                snap = self.snapshot()
                err = self.falsify(sub, depth)
                if err is None:
                    return None
                self.restore(snap)
                why.append(err)
            return f"cannot turn off {self.describe(expr)} ({'; '.join(why)})"
        if op == kl.OR:
            return self.falsify(expr[1], depth) or self.falsify(expr[2], depth)
        if op == kl.NOT:
            return self.satisfy(expr[1], depth)
        return f"{self.describe(expr)} holds in this tree/toolchain ({self.values(expr)})"

    def values(self, expr) -> str:
        syms = [s for s in self.kl.expr_items(expr) if isinstance(s, self.kl.Symbol) and not s.is_constant]
        return ", ".join(f"{s.name}={s.str_value or 'n'}" for s in syms[:4])

    def want_choice(self, choice, depth: int) -> Optional[str]:
        if choice.tri_value == 2:
            return None
        err = self.satisfy(choice.direct_dep, depth)
        if err:
            return err
        for node in choice.nodes:
            if node.prompt and self.kl.expr_value(node.prompt[1]) != 2:
                err = self.satisfy(node.prompt[1], depth)
                if err:
                    return err
        if choice.tri_value != 2 and 2 in choice.assignable:
            choice.set_value(2)
        return None if choice.tri_value == 2 else f"choice {choice.name or '(unnamed)'} stays off"

    def want(self, sym, val: int, depth: int = 0) -> Optional[str]:
        """Make ``sym`` take ``val`` (2 y, 1 m, 0 n); None on success, else why not."""
        kl = self.kl
        if sym.orig_type not in (kl.BOOL, kl.TRISTATE):
            return f"CONFIG_{sym.name} is not a bool/tristate"
        if sym.tri_value == val:
            return None
        if depth > MAX_DEPTH:
            return f"dependency chain through CONFIG_{sym.name} too deep"
        if sym in self._visiting:
            return f"dependency loop through CONFIG_{sym.name}"
        self._visiting.add(sym)
        self._stack.append(sym.name)
        try:
            return self._want(sym, val, depth)
        finally:
            self._stack.pop()
            self._visiting.discard(sym)

    def _want(self, sym, val: int, depth: int) -> Optional[str]:
        kl = self.kl
        if val == 0:
            if kl.expr_value(sym.rev_dep) != 0:
                err = self.falsify(sym.rev_dep, depth)
                if err:
                    return f"CONFIG_{sym.name} is selected ({err})"
            if sym.choice is not None:
                return None if sym.tri_value == 0 else f"CONFIG_{sym.name} is the only choice"
            if sym.visibility:
                self._set(sym, 0)
            if sym.tri_value == 0:
                return None
            # invisible and defaulting on: turn its dependencies off
            err = self.falsify(sym.direct_dep, depth)
            return None if err is None and sym.tri_value == 0 else \
                f"CONFIG_{sym.name} defaults to {sym.str_value} and has no prompt here"

        reasons = []
        # 1. its prompt (visible in menuconfig): satisfy the prompt's condition, then set it
        prompts = [n.prompt[1] for n in sym.nodes if n.prompt]
        if sym.choice is not None:
            err = self.want_choice(sym.choice, depth)
            if err:
                return f"CONFIG_{sym.name}: {err}"
        for cond in prompts:
            snap = self.snapshot()
            err = self.satisfy(cond, depth)
            if err is None:
                err = self.satisfy(sym.direct_dep, depth)
            if err is None:
                if sym.choice is not None:
                    if sym.visibility:
                        sym.set_value(2)
                        self._note_added(sym.name, "y")
                elif sym.visibility >= val or (val == 2 and sym.visibility == 1 and sym.orig_type == kl.BOOL):
                    self._set(sym, val)
                if sym.tri_value >= val:
                    return None
                err = f"CONFIG_{sym.name} stays {sym.str_value or 'n'}"
            self.restore(snap)
            reasons.append(err)
        # 2. something that selects it
        for term in _or_terms(kl, sym.rev_dep):
            snap = self.snapshot()
            err = self.satisfy(term, depth)
            if err is None and sym.tri_value >= val:
                return None
            self.restore(snap)
            reasons.append(err or f"selecting it via {self.describe(term)} is not enough")
        # 3. a default that applies once its condition holds
        for default, cond in sym.defaults:
            if kl.expr_value(default) == 0 and not isinstance(default, kl.Symbol):
                continue
            if isinstance(default, kl.Symbol) and default.is_constant and default.name == "n":
                continue
            snap = self.snapshot()
            err = self.satisfy(cond, depth) or self.satisfy(sym.direct_dep, depth) or self.satisfy(default, depth)
            if err is None and sym.tri_value >= val:
                return None
            self.restore(snap)
            if err:
                reasons.append(err)
        if not prompts and not sym.defaults and sym.rev_dep is self.k.n:
            return f"CONFIG_{sym.name} has no prompt, default or select in this tree"
        return "; ".join(dict.fromkeys(r for r in reasons if r)) or f"CONFIG_{sym.name} stays {sym.str_value or 'n'}"


def _or_terms(kl, expr) -> list:
    if isinstance(expr, tuple) and expr[0] == kl.OR:
        return _or_terms(kl, expr[1]) + _or_terms(kl, expr[2])
    return [] if expr is None or (isinstance(expr, kl.Symbol) and expr.name == "n") else [expr]


# --------------------------------------------------------------------------- resolution


def _user_state(kconf) -> dict[str, object]:
    return {s.name: s.user_value for s in kconf.unique_defined_syms}


def _tri(v: int) -> str:
    return "nmy"[v]


def resolve(kconf, base_config: Optional[Path], intents: Sequence[Intent], *, debug: str = "prefer-dwarf5",
            btf: bool = True, btf_unavailable: str = "") -> Resolution:
    """The assignments that make ``intents`` and the debug-info policy stick, on top of ``base_config``.

    ``debug``: "prefer-dwarf5" (scopecheck's configs) or "any" (a user's
    FILE: keep its debug info if it has full debug info). ``btf``: try BTF
    (the caller has checked pahole); ``btf_unavailable``: why not, for the
    choices. Raises :class:`Unresolvable` when a required intent cannot stick.
    """
    import kconfiglib as kl

    if base_config is not None:
        kconf.load_config(str(base_config), replace=True)
    base = _user_state(kconf)
    base_sel = {c: c.user_selection for c in kconf.unique_choices}
    r = _Resolver(kconf)
    res = Resolution()
    failed: list[str] = []

    # the debug-info policy first (it decides choices other options may depend on)
    def set_debug() -> None:
        _debug_policy(r, res, debug, btf, btf_unavailable, failed)

    for it in intents:
        if it.section in POLICY_SECTIONS:
            continue
        sym = r.sym(it.name)
        if sym is None:
            if it.name in ALWAYS_REQUIRED:
                failed.append(f"CONFIG_{it.name} (not in this tree)")
            elif it.value != "n":
                res.dropped.append(f"CONFIG_{it.name} (not in this tree)")
            continue
        if sym.orig_type not in (kl.BOOL, kl.TRISTATE):
            sym.set_value(it.value.strip('"') if sym.orig_type == kl.STRING else it.value)
            continue
        val = {"y": 2, "m": 1, "n": 0}.get(it.value)
        if val is None:
            continue
        snap = r.snapshot()
        err = r.want(sym, val)
        if err is None and sym.tri_value == val:
            continue
        r.restore(snap)
        line = f"CONFIG_{it.name}={it.value}: {err or 'does not stick'}"
        (failed if it.required else res.dropped).append(line)
    if "ARM64" not in {i.name for i in intents} and r.sym("ARM64") is not None and r.sym("ARM64").tri_value != 2:
        failed.append("CONFIG_ARM64 (not an arm64 config)")
    for req in ("KVM",):
        s = r.sym(req)
        if s is not None and s.tri_value != 2 and not any(i.name == req for i in intents):
            snap = r.snapshot()
            err = r.want(s, 2)
            if err:
                r.restore(snap)
                failed.append(f"CONFIG_{req}=y: {err}")
    set_debug()
    if failed:
        raise Unresolvable(f"{len(failed)} required option(s) cannot be set in this tree: " + "; ".join(failed),
                           [f.split("=")[0].split(" ")[0].split(":")[0] for f in failed])

    # the fragment: every assignment that differs from the base config
    for s in kconf.unique_defined_syms:
        if s.user_value != base.get(s.name) and s.user_value is not None:
            v = s.user_value
            res.assignments[s.name] = _tri(v) if isinstance(v, int) else (
                f'"{v}"' if s.orig_type == kl.STRING else str(v))
    for c in kconf.unique_choices:
        if c.user_selection is not None and c.user_selection is not base_sel.get(c):
            for m in c.syms:
                res.assignments[m.name] = "y" if m is c.user_selection else "n"
    for name, why in r.added.items():
        if name in res.assignments:
            res.added[name] = why
            res.choices.append(f"added CONFIG_{name}={why}")
    for d in res.dropped:
        res.choices.append(f"left out {d}")
    res.predicted = {s.name: s.str_value or "n" for s in kconf.unique_defined_syms
                     if s.orig_type in (kl.BOOL, kl.TRISTATE) and s.config_string}
    return res


_DWARF = (("DWARF 5", "DEBUG_INFO_DWARF5"), ("DWARF 4", "DEBUG_INFO_DWARF4"),
          ("toolchain default", "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT"))


def _current_debug(r: _Resolver) -> str:
    for label, name in _DWARF:
        s = r.sym(name)
        if s is not None and s.tri_value == 2:
            return label
    s = r.sym("DEBUG_INFO")
    return "toolchain default" if s is not None and s.tri_value == 2 else ""


def _full_debug(r: _Resolver, version_sym: Optional[str]) -> Optional[str]:
    """DEBUG_INFO=y in ``version_sym``'s DWARF version (None: the tree's default), never reduced or split."""
    for name in ("DEBUG_INFO_REDUCED", "DEBUG_INFO_SPLIT"):
        s = r.sym(name)
        if s is not None:
            err = r.want(s, 0)
            if err:
                return err
    if version_sym is not None:
        s = r.sym(version_sym)
        if s is None:
            return f"this tree has no CONFIG_{version_sym}"
        err = r.want(s, 2)
        if err:
            return err
    di = r.sym("DEBUG_INFO")
    if di is None:
        return "this tree has no CONFIG_DEBUG_INFO"
    err = r.want(di, 2)
    if err:
        return err
    for name in ("DEBUG_INFO_REDUCED", "DEBUG_INFO_SPLIT"):
        s = r.sym(name)
        if s is not None and s.tri_value:
            return f"CONFIG_{name} stays on"
    return None


def _want_btf(r: _Resolver) -> Optional[str]:
    for name in ("BPF_SYSCALL", "DEBUG_INFO_BTF"):
        s = r.sym(name)
        if s is None:
            return f"this tree has no CONFIG_{name}"
        err = r.want(s, 2)
        if err:
            return err
    return None


def _short(err: str) -> str:
    return err if len(err) <= 200 else err[:197] + "..."


def _debug_policy(r: _Resolver, res: Resolution, debug: str, btf: bool, btf_unavailable: str,
                  failed: list[str]) -> None:
    before = _current_debug(r)
    if debug == "any" and before:  # the FILE has debug info: keep its version, make it full
        snap = r.snapshot()
        if _full_debug(r, None) is None and _current_debug(r) == before:
            res.debug_info = _current_debug(r)
            res.choices.append(f"debug info: {res.debug_info} (as the config has it)")
            _btf_choice(r, res, btf, btf_unavailable, keep_only=True)
            return
        r.restore(snap)
    versions = [(label, name) for label, name in _DWARF if r.sym(name) is not None]
    if r.sym("DEBUG_INFO") is not None:
        versions.append(("toolchain default", None))  # 5.x trees without a DWARF choice
    has_d5 = r.sym("DEBUG_INFO_DWARF5") is not None

    def trial(name: Optional[str], with_btf: bool, label: str) -> Optional[str]:
        err = _full_debug(r, name)
        if err is None and with_btf:
            err = _want_btf(r)
            # BTF may have switched the DWARF version back ("DWARF5 depends on !DEBUG_INFO_BTF")
            if err is None and name is not None and _current_debug(r) != label:
                err = f"CONFIG_DEBUG_INFO_BTF switches {label} off"
        return err

    why: dict[tuple[str, bool], str] = {}
    plans = [(v, True) for v in versions] if btf else []
    plans += [(v, False) for v in versions]
    for (label, name), with_btf in plans:
        snap = r.snapshot()
        err = trial(name, with_btf, label)
        if err is not None:
            r.restore(snap)
            why[(label, with_btf)] = err
            continue
        res.debug_info = label
        res.btf = with_btf
        reason = ""
        if label != "DWARF 5":
            if not has_d5:
                reason = "this tree has no DWARF 5 option"
            elif with_btf:
                snap2 = r.snapshot()
                r.restore(snap)
                alone = trial("DEBUG_INFO_DWARF5", False, "DWARF 5")
                r.restore(snap2)
                d5 = why.get(("DWARF 5", True), "")
                reason = (f"DWARF 5 excludes BTF in this tree: {_short(d5)}" if alone is None
                          else f"DWARF 5 not possible: {_short(alone)}")
            else:
                reason = f"DWARF 5 not possible: {_short(why.get(('DWARF 5', False), ''))}"
        res.choices.insert(0, f"debug info: {label}" + (f" ({reason})" if reason else ""))
        first_btf_err = why.get((versions[0][0], True)) if versions else None
        _btf_choice(r, res, btf, btf_unavailable, chosen=with_btf, why=first_btf_err)
        return
    failed.append("CONFIG_DEBUG_INFO=y: " + "; ".join(
        f"{label}{' + BTF' if b else ''}: {_short(v)}" for (label, b), v in why.items() if not b))


def _btf_choice(r: _Resolver, res: Resolution, btf: bool, btf_unavailable: str, *, chosen: bool = False,
                why: Optional[str] = None, keep_only: bool = False) -> None:
    if keep_only:
        s = r.sym("DEBUG_INFO_BTF")
        res.btf = bool(s is not None and s.tri_value == 2)
        if res.btf and not btf:
            s.set_value(0)
            res.btf = False
            res.choices.append(f"BTF: no ({btf_unavailable or 'not possible here'})")
        else:
            res.choices.append(f"BTF: {'yes' if res.btf else 'no'} (as the config has it)")
        return
    if chosen:
        res.choices.append("BTF: yes")
    elif not btf:
        res.choices.append(f"BTF: no ({btf_unavailable or 'not asked for'})")
        s = r.sym("DEBUG_INFO_BTF")
        if s is not None and s.tri_value:
            r.want(s, 0)
    else:
        res.choices.append(f"BTF: no ({_short(why or 'not possible in this tree')})")


# --------------------------------------------------------------------------- verification


def verify(res: Resolution, final: dict[str, str]) -> list[str]:
    """Options whose value after ``make olddefconfig`` differs from the resolver's prediction."""
    out = []
    for name, want in res.predicted.items():
        got = final.get(f"CONFIG_{name}", "n")
        if got != want:
            out.append(f"CONFIG_{name} (predicted {want}, olddefconfig gave {got})")
    return out
