"""Stretch: which hyp functions really ran at EL2 during the guest run, against the static call graph.

How (``scopecheck boot --trace-hyp --vmlinux VMLINUX``):

1. QEMU starts with ``-d nochain`` (every translation block executes through the
   logger, none is chained past it), ``-dfilter`` limited to the nVHE hyp VA
   ranges (bit ``VA_BITS-1`` set, for VA_BITS 39/42/47/48/52), the guest RAM
   page and kvm_smoke's marker page, an HMP monitor on a unix socket, one CPU,
   and ``nokaslr``.
2. The init script stops at ``SCOPECHECK: trace wait``; the host turns the exec
   log on through the monitor (``log exec``) and answers on the serial console.
   ``kvm_smoke run --markers`` executes a stub at 0x5c09e0000 before opening
   /dev/kvm and one at 0x5c09e0040 after closing the VM: the exec-log lines in
   between are the guest run (VM creation, vcpu init, two runs, teardown).
   At ``kvm run status`` the host turns the log off (``log none``).
3. Lines whose TB flags carry QEMU's EL2 MMU index (6) are hyp code. A hyp VA
   keeps the low ``tag_lsb`` bits of the kernel's linear-map address (30 bits
   with QEMU's 1 GiB of RAM at 0x40000000), so ``(pc - phys(_stext)) mod 2^30``
   is the offset from ``_stext`` in VMLINUX; ``phys(_stext)`` is the start of
   "Kernel code" in /proc/iomem, which the init script prints.
4. Each address is mapped to a function of
   :func:`scopecheck.binary.functions.hyp_functions` (the static call graph's
   nodes); any EL2 address that is no node is listed.
"""

from __future__ import annotations

import bisect
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from scopecheck.boot.checks import Check
from scopecheck.boot.qemu import QemuRun
from scopecheck.errors import InputError

MARKER_PAGE = 0x5C09E0000
MARKER_BEGIN, MARKER_END = MARKER_PAGE, MARKER_PAGE + 0x40
GUEST_RAM, GUEST_SIZE = 0x10000000, 0x10000
EL2_MMUIDX = 6            # QEMU's ARMMMUIdx_E2 core index (TB flags bits 4..7, QEMU 7.x)
LINEAR_BITS = 30          # tag_lsb for 1 GiB of RAM at 0x40000000
_LINE = re.compile(rb"\[([0-9a-f]+)/([0-9a-f]+)/([0-9a-f]+)/([0-9a-f]+)\]")
_IOMEM = re.compile(r"SCOPECHECK: iomem ([0-9a-f]+)-([0-9a-f]+) : Kernel code")


def _hyp_ranges() -> list[str]:
    return [f"{1 << (b - 1):#x}..{(1 << b) - 1:#x}" for b in (39, 42, 47, 48, 52)]


class HypTracer:
    def __init__(self, vmlinux: Path):
        if not Path(vmlinux).is_file():
            raise InputError(f"{vmlinux}: no such file")
        self.vmlinux = Path(vmlinux)
        self.tmp = tempfile.TemporaryDirectory(prefix="scopecheck-trace-")
        self.sock_path = os.path.join(self.tmp.name, "monitor.sock")
        self.log_path = os.path.join(self.tmp.name, "exec.log")
        self.sock: Optional[socket.socket] = None
        self.proc: Optional[subprocess.Popen] = None
        self.events: list[str] = []

    # ---------------------------------------------------------------- QEMU side

    def qemu_args(self) -> tuple[str, ...]:
        dfilter = ",".join(_hyp_ranges() + [f"{GUEST_RAM:#x}+{GUEST_SIZE:#x}", f"{MARKER_PAGE:#x}+0x1000"])
        return ("-d", "nochain", "-dfilter", dfilter, "-D", self.log_path)

    @property
    def monitor(self) -> str:
        return f"unix:{self.sock_path},server=on,wait=off"

    def on_start(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def _hmp(self, cmd: str) -> str:
        if self.sock is None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.settimeout(5)
                    s.connect(self.sock_path)
                    break
                except OSError:
                    s.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.sock = s
            self._read_prompt()
        self.sock.sendall(cmd.encode() + b"\n")
        return self._read_prompt()

    def _read_prompt(self) -> str:
        buf = b""
        while not buf.endswith(b"(qemu) "):
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf.decode("utf-8", "replace")

    def on_line(self, line: str) -> None:
        try:
            if "SCOPECHECK: trace wait" in line and self.proc is not None:
                self._hmp("log exec")
                self.events.append("exec log on")
                self.proc.stdin.write(b"go\n")
                self.proc.stdin.flush()
            elif "SCOPECHECK: kvm run status" in line:
                self._hmp("log none")
                self.events.append("exec log off")
        except OSError as e:
            self.events.append(f"monitor error: {e}")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def cleanup(self) -> None:
        self.close()
        self.tmp.cleanup()

    # ---------------------------------------------------------------- analysis

    def analyse(self, run: QemuRun) -> tuple[dict, Check]:
        name = "hyp-trace-in-call-graph"
        try:
            return self._analyse(run, name)
        finally:
            self.cleanup()

    def _analyse(self, run: QemuRun, name: str) -> tuple[dict, Check]:
        from scopecheck.binary.elf import ElfImage
        from scopecheck.binary.functions import PREFIX, hyp_functions, read_symbols

        iomem = next((m for m in map(_IOMEM.search, run.console) if m), None)
        trace: dict = {"log_events": self.events, "functions": [], "not_in_call_graph": []}
        if iomem is None or not os.path.exists(self.log_path):
            why = "no 'Kernel code' line from /proc/iomem" if iomem is None else "QEMU wrote no exec log"
            return trace, Check(name, False, [], f"no trace: {why}")
        kcode = int(iomem.group(1), 16)
        pcs: dict[int, int] = {}
        guest_blocks = 0
        lines = 0
        inside = False
        saw_markers = False
        with open(self.log_path, "rb") as f:
            for raw in f:
                m = _LINE.search(raw)
                if not m:
                    continue
                lines += 1
                pc = int(m.group(2), 16)
                flags = int(m.group(3), 16)
                if pc == MARKER_BEGIN:
                    inside, saw_markers = True, True
                    continue
                if pc == MARKER_END:
                    inside = False
                    continue
                if saw_markers and not inside:
                    continue
                if GUEST_RAM <= pc < GUEST_RAM + GUEST_SIZE:
                    guest_blocks += 1
                elif (flags >> 4) & 0xF == EL2_MMUIDX:
                    pcs[pc] = pcs.get(pc, 0) + 1
        trace.update(log_lines=lines, markers=saw_markers, guest_blocks=guest_blocks,
                     el2_blocks=sum(pcs.values()), el2_addresses=len(pcs))
        with ElfImage(self.vmlinux) as elf:
            syms = read_symbols(elf, PREFIX, extra=("_stext",))
            facts = hyp_functions(elf)
        stext = next((s.value for s in syms if s.name == "_stext"), None)
        if stext is None:
            return trace, Check(name, False, [], f"no _stext symbol in {self.vmlinux}")
        spans = sorted((lo, hi, fn) for fn in facts.functions for lo, hi in fn.ranges if hi > lo)
        starts = [s[0] for s in spans]
        hsyms = sorted((s.value, s.name) for s in syms if s.name.startswith(PREFIX) and s.type in (0, 2))
        hstarts = [v for v, _ in hsyms]
        mask = (1 << LINEAR_BITS) - 1
        ran: dict[tuple, list] = {}
        stray: dict[str, int] = {}
        for pc, n in pcs.items():
            kva = stext + ((pc - kcode) & mask)
            i = bisect.bisect_right(starts, kva) - 1
            if i >= 0 and spans[i][0] <= kva < spans[i][1]:
                fn = spans[i][2]
                ent = ran.setdefault(fn.key, [fn, 0])
                ent[1] += n
                continue
            j = bisect.bisect_right(hstarts, kva) - 1
            label = f"{hsyms[j][1]}+{kva - hsyms[j][0]:#x}" if j >= 0 and kva - hsyms[j][0] < 0x10000 \
                else f"{kva:#x}"
            stray[label] = stray.get(label, 0) + n
        funcs = sorted(ran.values(), key=lambda e: (-e[1], e[0].name))
        trace["functions"] = [{"name": fn.name, "symbol": fn.symbol, "file": fn.decl_file, "blocks": n,
                               "asm": fn.is_asm} for fn, n in funcs]
        trace["not_in_call_graph"] = [{"address": k, "blocks": v} for k, v in sorted(stray.items())]
        trace["call_graph_nodes"] = len(facts.functions)
        ev = [f"exec log: {lines} lines, {trace['el2_blocks']} EL2 blocks at {len(pcs)} addresses, "
              f"{guest_blocks} guest blocks" + (" (between kvm_smoke's markers)" if saw_markers else "")]
        ev += [f"EL2 ran {fn.name} ({n} blocks)" for fn, n in funcs]
        ev += [f"EL2 ran {k}: not a node of the static call graph ({v} blocks)" for k, v in sorted(stray.items())]
        if not pcs:
            return trace, Check(name, False, ev, "no EL2 execution recorded during the guest run")
        if stray:
            return trace, Check(name, False, ev, f"{len(stray)} EL2 address(es) outside the static call graph's "
                                                 f"{len(facts.functions)} nodes")
        return trace, Check(name, True, ev, f"{len(funcs)} hyp functions ran at EL2 during the guest run; each is "
                                            f"a node of the static call graph ({len(facts.functions)} nodes)")
