"""Turn a boot's console into pass/fail checks, each with the console lines that prove it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from scopecheck.boot.qemu import QemuRun

MARK = "SCOPECHECK: "
#: what the kernel prints when hyp came up in each mode. pKVM runs its nVHE hyp code with
#: HCR_EL2.E2H set ("hVHE") on CPUs with VHE since 6.5 (QEMU -cpu max is one): same code, same proof.
HYP_OK = {
    "protected": ("Protected nVHE mode initialized successfully", "Protected hVHE mode initialized successfully"),
    "nvhe": ("Hyp mode initialized successfully",),
}
#: kernel lines that explain why hyp did not come up as requested
HYP_TROUBLE = ("HYP mode not available", "error initializing Hyp mode", "VHE mode initialized successfully",
               "Protected nVHE mode initialized successfully", "Protected hVHE mode initialized successfully",
               "Hyp mode initialized successfully",
               "KVM is not available", "kvm [", "kvm:", "CPU: CPUs started in inconsistent modes")
_BTF_RE = re.compile(r"SCOPECHECK: btf struct (\w+) (?:size (\d+)|absent)")
_TS_RE = re.compile(r"^\[\s*\d+\.\d+\]\s*")


@dataclass
class Check:
    name: str
    passed: Optional[bool]          # None: skipped (nothing to compare), does not fail the run
    evidence: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def status(self) -> str:
        return "skip" if self.passed is None else ("pass" if self.passed else "fail")

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "status": self.status, "detail": self.detail,
                "evidence": self.evidence}


def _grep(lines: list[str], *needles: str) -> list[str]:
    return [ln for ln in lines if any(n in ln for n in needles)]


def _why_not_reached(run: QemuRun, stage: str) -> str:
    if run.panicked:
        return f"{stage} not reached: the kernel panicked"
    if run.timed_out:
        return f"{stage} not reached: no result before the timeout"
    return f"{stage} not reached: QEMU exited first"


def hyp_check(run: QemuRun, mode: str) -> Check:
    want = HYP_OK[mode]
    got = _grep(run.console, *want)
    if mode == "nvhe":  # "Protected nVHE mode initialized successfully" contains the nVHE text too
        got = [ln for ln in got if "Protected" not in ln]
    if got:
        how = " (hVHE: nVHE hyp code with E2H set)" if "hVHE" in got[0] else ""
        return Check("hyp-initialised", True, got[:1], f"hyp initialised in {mode} mode{how}")
    ev = _grep(run.console, *HYP_TROUBLE)[-8:]
    detail = "no " + " or ".join(f"'{w}'" for w in want) + " on the console"
    if not run.console:
        detail += "; the kernel printed nothing (wrong or corrupted image?)"
    elif run.panicked or run.timed_out:
        detail += "; " + _why_not_reached(run, "KVM initialisation")
    return Check("hyp-initialised", False, ev, detail)


def kvm_dev_check(run: QemuRun) -> Check:
    ok = _grep(run.console, MARK + "kvm present")
    if ok:
        return Check("dev-kvm", True, ok, "/dev/kvm is a character device")
    absent = _grep(run.console, MARK + "kvm absent")
    if absent:
        return Check("dev-kvm", False, absent + _grep(run.console, "HYP mode not available", "KVM is not available"),
                     "/dev/kvm missing: KVM is not available in this kernel")
    return Check("dev-kvm", False, [], _why_not_reached(run, "init"))


def guest_check(run: QemuRun) -> Check:
    lines = _grep(run.console, MARK + "kvm ", MARK + "kernel ")
    lines = [ln for ln in lines if "kvm present" not in ln and "kvm absent" not in ln]
    if _grep(run.console, MARK + "kvm guest ok"):
        exits = _grep(run.console, MARK + "kvm exit ")
        return Check("guest-mmio-exit", True, exits + _grep(run.console, MARK + "kvm guest ok"),
                     "guest ran and exited with KVM_EXIT_MMIO writes of 0xc0ffee42, 0xc0ffee43 to 0x10000")
    if _grep(run.console, MARK + "kvm absent"):
        return Check("guest-mmio-exit", False, [], "not run: /dev/kvm missing")
    if not _grep(run.console, MARK + "kvm run begin"):
        return Check("guest-mmio-exit", False, [], _why_not_reached(run, "guest run"))
    detail = "the guest did not exit as expected"
    if run.panicked or run.timed_out:
        detail += "; " + _why_not_reached(run, "the end of the guest run")
    return Check("guest-mmio-exit", False, lines, detail)


def btf_sizes(run: QemuRun) -> dict[str, Optional[int]]:
    out: dict[str, Optional[int]] = {}
    for ln in run.console:
        m = _BTF_RE.search(ln)
        if m:
            out[m.group(1)] = int(m.group(2)) if m.group(2) else None
    return out


def btf_check(run: QemuRun, dwarf: Optional[dict[str, Optional[int]]], vmlinux: Optional[str]) -> Check:
    """BTF sizes of the running kernel against DWARF sizes of --vmlinux (absent on both sides agrees)."""
    name = "btf-sizes-match-dwarf"
    btf = btf_sizes(run)
    ev = _grep(run.console, MARK + "btf ")
    if not btf:
        if _grep(run.console, MARK + "btf absent", MARK + "btf unavailable"):
            return Check(name, None if dwarf is None else False, ev,
                         "no /sys/kernel/btf/vmlinux in the running kernel (CONFIG_DEBUG_INFO_BTF not set)")
        if _grep(run.console, MARK + "btf bad"):
            return Check(name, False, ev, "/sys/kernel/btf/vmlinux could not be parsed")
        return Check(name, False, ev, _why_not_reached(run, "BTF read"))
    if dwarf is None:
        shown = ", ".join(f"{k} {v}" for k, v in btf.items() if v is not None)
        return Check(name, None, ev, f"BTF: {shown}; no --vmlinux given, nothing to compare with")
    diffs, same = [], []
    for s in btf:
        b, d = btf.get(s), dwarf.get(s)
        if b is None and d is None:
            continue
        if b == d:
            same.append(f"{s} {b}")
        else:
            diffs.append(f"{s}: BTF {'absent' if b is None else b}, DWARF {'absent' if d is None else d}")
    ev = ev + [f"DWARF ({vmlinux}): " + ", ".join(f"{k} {'absent' if v is None else v}" for k, v in dwarf.items())]
    if diffs:
        return Check(name, False, ev, "sizes differ: " + "; ".join(diffs)
                     + " (is --vmlinux the debug file of this IMAGE?)")
    return Check(name, True, ev, "BTF equals DWARF: " + ", ".join(same))


def strip_timestamp(line: str) -> str:
    return _TS_RE.sub("", line)
