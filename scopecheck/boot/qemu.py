"""Boot an arm64 kernel under qemu-system-aarch64 and collect its console.

QEMU runs in its own session (process group); whatever happens -- normal
power-off, panic, hang, Ctrl-C, an exception in the reader -- the group is
killed when the deadline passes and the process is always waited for, so it
never outlives ``timeout``.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from scopecheck.errors import ToolMissing

QEMU = "qemu-system-aarch64"
QEMU_PACKAGE = "qemu-system-arm"

#: console lines that end the run early: the kernel will not get anywhere after these
PANIC_MARKERS = ("Kernel panic - not syncing",)
DONE_MARKER = "SCOPECHECK: done"


@dataclass
class QemuRun:
    argv: list[str]
    console: list[str] = field(default_factory=list)
    returncode: Optional[int] = None
    timed_out: bool = False
    panicked: bool = False
    seconds: float = 0.0
    #: monotonic seconds after start at which each console line arrived
    stamps: list[float] = field(default_factory=list)
    stderr: str = ""

    def first(self, needle: str) -> Optional[float]:
        for line, t in zip(self.console, self.stamps):
            if needle in line:
                return t
        return None


def qemu_binary() -> str:
    exe = shutil.which(QEMU)
    if exe is None:
        raise ToolMissing(QEMU, QEMU_PACKAGE)
    return exe


def qemu_argv(image: Path, initrd: Path, append: str, *, el2: bool = True, memory: str = "1G", smp: int = 2,
              monitor: str = "none", extra: tuple[str, ...] = ()) -> list[str]:
    machine = "virt,gic-version=3" + (",virtualization=on" if el2 else "")
    return [qemu_binary(), "-M", machine, "-cpu", "max,pauth-impdef=on", "-m", memory, "-smp", str(smp),
            "-nographic", "-monitor", monitor, "-serial", "stdio", "-nic", "none", "-no-reboot",
            "-kernel", str(image), "-initrd", str(initrd), "-append", append, *extra]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def run_qemu(argv: list[str], timeout: float, on_line: Optional[Callable[[str], None]] = None,
             stop_after_done: float = 3.0, stdin_pipe: bool = False,
             on_start: Optional[Callable[[subprocess.Popen], None]] = None) -> QemuRun:
    """Run QEMU until it exits, the kernel panics, or ``timeout`` seconds pass; never longer."""
    res = QemuRun(argv=list(argv))
    start = time.monotonic()
    deadline = start + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    sel = selectors.DefaultSelector()
    partial = {proc.stdout: b"", proc.stderr: b""}
    err_chunks: list[bytes] = []
    end_by: Optional[float] = None  # after a panic or the done marker: give QEMU a moment to exit
    try:
        if on_start is not None:
            on_start(proc)
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        open_streams = 2
        while open_streams:
            now = time.monotonic()
            limit = deadline if end_by is None else min(deadline, end_by)
            if now >= limit:
                if end_by is None or now >= deadline:
                    res.timed_out = end_by is None
                break
            for key, _ in sel.select(timeout=min(0.2, limit - now)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                if key.fileobj is proc.stderr:
                    err_chunks.append(chunk)
                    continue
                data = partial[key.fileobj] + chunk
                *lines, rest = data.split(b"\n")
                partial[key.fileobj] = rest
                t = time.monotonic() - start
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    res.console.append(line)
                    res.stamps.append(t)
                    if on_line is not None:
                        on_line(line)
                    if any(m in line for m in PANIC_MARKERS):
                        res.panicked = True
                        end_by = end_by or time.monotonic() + 1.0
                    elif DONE_MARKER in line:
                        end_by = end_by or time.monotonic() + stop_after_done
        tail = partial[proc.stdout].decode("utf-8", "replace").rstrip("\r")
        if tail:
            res.console.append(tail)
            res.stamps.append(time.monotonic() - start)
        # QEMU closed its output or we stopped reading: wait for it, but not past the deadline
        try:
            proc.wait(timeout=max(0.0, min(deadline, end_by or deadline) - time.monotonic()))
        except subprocess.TimeoutExpired:
            if end_by is None:
                res.timed_out = True
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        else:
            _kill_group(proc)  # stray children of the group, if any
        proc.wait()
        sel.close()
        for s in (proc.stdin, proc.stdout, proc.stderr):
            if s is None:
                continue
            try:
                s.close()
            except OSError:
                pass
    res.returncode = proc.returncode
    res.seconds = time.monotonic() - start
    res.stderr = b"".join(err_chunks).decode("utf-8", "replace")
    return res
