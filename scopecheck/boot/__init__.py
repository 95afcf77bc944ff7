"""``scopecheck boot``: boot an arm64 kernel under QEMU and check KVM works in it.

The kernel boots ``qemu-system-aarch64 -M virt,virtualization=on,gic-version=3
-cpu max`` at EL2 with ``kvm-arm.mode=protected`` (or ``nvhe``) and an
initramfs holding Debian's busybox-static and ``kvm_smoke`` (written here,
scopecheck/data/guest/kvm_smoke.c). The console is checked for:

* ``hyp-initialised``: the kernel's "Protected nVHE mode initialized
  successfully" (or "Protected hVHE mode ...": pKVM's nVHE hyp with E2H set, 6.5+
  on CPUs with VHE; "Hyp mode initialized successfully" for nvhe);
* ``dev-kvm``: /dev/kvm exists;
* ``guest-mmio-exit``: a VM with one memory slot and one vcpu ran guest code
  that exited twice with KVM_EXIT_MMIO writes of known values to a known address;
* ``btf-sizes-match-dwarf``: struct sizes in the running kernel's BTF equal the
  DWARF sizes of ``--vmlinux`` (skipped without --vmlinux or without BTF).

Exit: 0 all checks pass (skips allowed), 1 a check failed -- including a
panic, a timeout, or KVM not available (``status`` says which) --, 2 an error
before or around the boot (bad IMAGE, wrong architecture, missing qemu or
cross compiler).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from scopecheck.boot.checks import Check
from scopecheck.boot.qemu import QemuRun
from scopecheck.errors import InputError, ScopecheckError

SCHEMA_VERSION = 1
MAX_TEXT_EVIDENCE = 16
MODES = ("protected", "nvhe")

__all__ = ["BootReport", "boot", "SCHEMA_VERSION", "MODES"]


class QemuFailed(ScopecheckError):
    """QEMU did not start the kernel at all (bad option, unloadable file)."""


@dataclass
class BootReport:
    image: str
    vmlinux: Optional[str]
    mode: str
    status: str  # completed | kvm-unavailable | panic | timeout | no-output | exited-early
    checks: list[Check]
    seconds: float
    timings: dict[str, Optional[float]]
    kernel: Optional[str] = None
    console_lines: int = 0
    console_file: Optional[str] = None
    qemu_argv: list[str] = field(default_factory=list)
    trace: Optional[dict] = None

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "image": self.image,
            "vmlinux": self.vmlinux,
            "mode": self.mode,
            "status": self.status,
            "passed": self.passed,
            "kernel": self.kernel,
            "seconds": round(self.seconds, 2),
            "timings": {k: (None if v is None else round(v, 2)) for k, v in self.timings.items()},
            "checks": [c.to_dict() for c in self.checks],
            "trace": self.trace,
            "console_lines": self.console_lines,
            "console_file": self.console_file,
            "qemu": self.qemu_argv,
        }


def _status(run: QemuRun) -> str:
    # What ended the run comes first: a kernel still silent when --timeout killed QEMU
    # (a loaded machine, a short timeout, a hung early boot) is a timeout.
    if run.panicked:
        return "panic"
    if run.timed_out:
        return "timeout"
    if not run.console:
        return "no-output"
    if any("SCOPECHECK: done" in ln for ln in run.console):
        if any("SCOPECHECK: kvm absent" in ln for ln in run.console):
            return "kvm-unavailable"
        return "completed"
    return "exited-early"


def dwarf_sizes(vmlinux: Path) -> dict[str, Optional[int]]:
    """Sizes of the BTF structs from DWARF, as ``scopecheck size`` reads them (None: not in this build)."""
    from scopecheck import targets as tg
    from scopecheck.boot.assets import BTF_STRUCTS
    from scopecheck.size import size_report

    rep = size_report(tg.resolve(vmlinux), None, pahole=False)
    out: dict[str, Optional[int]] = {}
    for s in BTF_STRUCTS:
        lay = rep.layouts.get(s)
        out[s] = lay.size if lay is not None else None
    return out


def boot(image: Path, vmlinux: Optional[Path] = None, mode: str = "protected", timeout: float = 120.0, *,
         el2: bool = True, console_file: Optional[Path] = None, trace_hyp: bool = False, append_extra: str = "",
         progress: Optional[Callable[[str], None]] = None) -> BootReport:
    """Boot ``image``, run the KVM smoke test in it, and check the console (see module doc)."""
    from scopecheck.boot import assets, checks, qemu
    from scopecheck.boot.image import check_image

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    if mode not in MODES:
        raise InputError(f"--mode {mode}: choose protected or nvhe")
    if timeout <= 0:
        raise InputError("--timeout must be positive")
    image = Path(image)
    if vmlinux is not None:  # an ELF with DWARF: checked before anything else (its type before opening)
        from scopecheck.binary.elf import ElfImage

        with ElfImage(vmlinux) as elf:
            elf.require_dwarf()
    check_image(image)
    qemu.qemu_binary()  # ToolMissing early, before any download
    dwarf = None
    if vmlinux is not None:
        say(f"reading DWARF sizes from {vmlinux}")
        dwarf = dwarf_sizes(Path(vmlinux))
    say("preparing busybox-static (Debian arm64)")
    bb = assets.busybox()
    say("building kvm_smoke (aarch64-linux-gnu-gcc -static)")
    prog = assets.guest_program()
    initrd = assets.initramfs(bb, prog)
    append = f"console=ttyAMA0 kvm-arm.mode={mode} rdinit=/init panic=-1"
    if append_extra.strip():
        append += " " + " ".join(append_extra.split())
    extra: tuple[str, ...] = ()
    monitor, smp = "none", 2
    tracer = None
    if trace_hyp:
        from scopecheck.boot.trace import HypTracer

        if vmlinux is None:
            raise InputError("--trace-hyp needs --vmlinux (to map EL2 addresses to hyp functions)")
        tracer = HypTracer(Path(vmlinux))
        append += " nokaslr scopecheck.trace=1"
        extra = tracer.qemu_args()
        monitor, smp = tracer.monitor, 1
    argv = qemu.qemu_argv(image, initrd, append, el2=el2, smp=smp, monitor=monitor, extra=extra)

    started = time.monotonic()

    def on_line(line: str) -> None:
        if tracer is not None:
            tracer.on_line(line)
        if checks.MARK in line:
            say(f"booting ({time.monotonic() - started:.0f} s): {line.split(checks.MARK, 1)[1][:60]}")
        elif "kvm [" in line:
            say(f"booting ({time.monotonic() - started:.0f} s): {checks.strip_timestamp(line)[:60]}")

    say(f"booting {image.name} under QEMU (timeout {timeout:g} s)")
    try:
        run = qemu.run_qemu(argv, timeout, on_line=on_line, stdin_pipe=tracer is not None,
                            on_start=tracer.on_start if tracer is not None else None)
    except BaseException:
        if tracer is not None:
            tracer.cleanup()
        raise
    if tracer is not None:
        tracer.close()
    if console_file is not None:
        Path(console_file).write_text("\n".join(run.console) + "\n")
    if not run.console and run.returncode not in (0, None) and not run.timed_out:
        msg = run.stderr.strip().splitlines()
        raise QemuFailed(f"qemu-system-aarch64 failed (exit {run.returncode}): "
                         f"{msg[-1] if msg else 'no output'}")
    result = [
        checks.hyp_check(run, mode),
        checks.kvm_dev_check(run),
        checks.guest_check(run),
        checks.btf_check(run, dwarf, str(vmlinux) if vmlinux else None),
    ]
    if run.panicked:
        idx = next(i for i, ln in enumerate(run.console) if "Kernel panic" in ln)
        result.append(Check("no-panic", False, run.console[max(0, idx - 6):idx + 1], "the kernel panicked"))
    if run.timed_out:
        result.append(Check("finished-in-time", False, run.console[-5:],
                            f"no power-off within --timeout {timeout:g} s; QEMU was killed"))
    trace = None
    if tracer is not None:
        say("mapping EL2 addresses to hyp functions")
        trace, tcheck = tracer.analyse(run)
        result.append(tcheck)
    kernel = next((ln.split("SCOPECHECK: kernel ", 1)[1] for ln in run.console if "SCOPECHECK: kernel " in ln), None)
    timings = {
        "hyp_initialised": min((t for w in checks.HYP_OK[mode] if (t := run.first(w)) is not None), default=None),
        "init_started": run.first("SCOPECHECK: init started"),
        "guest_mmio_exit": run.first("SCOPECHECK: kvm exit 1 reason MMIO"),
        "done": run.first("SCOPECHECK: done"),
    }
    return BootReport(image=str(image), vmlinux=str(vmlinux) if vmlinux else None, mode=mode, status=_status(run),
                      checks=result, seconds=run.seconds, timings=timings, kernel=kernel,
                      console_lines=len(run.console), console_file=str(console_file) if console_file else None,
                      qemu_argv=argv, trace=trace)


def format_text(rep: BootReport) -> str:
    """The human report: one line per check, then its evidence lines indented."""
    from scopecheck.boot.checks import strip_timestamp

    out = [f"{rep.image}: {rep.mode}, {rep.status} in {rep.seconds:.1f} s"
           + (f" ({rep.kernel})" if rep.kernel else "")]
    for c in rep.checks:
        out.append(f"{c.status.upper():4}  {c.name}: {c.detail}")
        shown = c.evidence if len(c.evidence) <= MAX_TEXT_EVIDENCE else c.evidence[:MAX_TEXT_EVIDENCE - 1]
        for ev in shown:
            out.append(f"      | {strip_timestamp(ev)}")
        if len(shown) < len(c.evidence):
            out.append(f"      | ... {len(c.evidence) - len(shown)} more lines (--format json lists all)")
    t = rep.timings
    parts = [f"{k.replace('_', ' ')} {v:.1f} s" for k, v in t.items() if v is not None]
    if parts:
        out.append("timings: " + ", ".join(parts))
    failed = [c.name for c in rep.checks if c.passed is False]
    out.append("result: " + ("all checks passed" if not failed else "FAILED: " + ", ".join(failed)))
    return "\n".join(out) + "\n"
