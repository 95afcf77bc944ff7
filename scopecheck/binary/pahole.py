"""Cross-check with pahole (Debian package ``dwarves``): run it, parse its summary comments."""

from __future__ import annotations

import re
import shutil
import subprocess
from os import PathLike

from scopecheck.errors import InputError, ToolMissing
from scopecheck.model import PaholeStruct

PACKAGE = "dwarves"
_HEAD = re.compile(r"^(struct|union) (\S+) \{")
_SIZE = re.compile(r"^\t/\* size: (\d+), cachelines: (\d+), members: (\d+)")
_SUM = re.compile(r"^\t/\* sum members: \d+(?:, holes: (\d+), sum holes: (\d+))?")
_PAD = re.compile(r"^\t/\* padding: (\d+)")


def pahole_path() -> str | None:
    return shutil.which("pahole")


def pahole_version(timeout: float = 10) -> str:
    exe = pahole_path()
    if exe is None:
        raise ToolMissing("pahole", PACKAGE)
    try:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InputError(f"pahole --version failed: {e}") from None
    return r.stdout.strip() or r.stderr.strip()


def parse(text: str) -> dict[str, PaholeStruct]:
    """Parse ``pahole -C a,b,c`` output into one record per top-level struct."""
    out: dict[str, PaholeStruct] = {}
    cur: PaholeStruct | None = None
    for line in text.splitlines():
        m = _HEAD.match(line)
        if m:
            cur = PaholeStruct(name=m.group(2), size=-1)
            continue
        if cur is None:
            continue
        if line.startswith("}"):
            if cur.size >= 0:
                out.setdefault(cur.name, cur)
            cur = None
            continue
        if (m := _SIZE.match(line)):
            cur.size, cur.cachelines, cur.nr_members = int(m.group(1)), int(m.group(2)), int(m.group(3))
        elif (m := _SUM.match(line)):
            if m.group(1):
                cur.holes, cur.sum_holes = int(m.group(1)), int(m.group(2))
        elif (m := _PAD.match(line)):
            cur.padding = int(m.group(1))
    return out


def run(path: str | PathLike, names: list[str], timeout: float = 120,
        fmt: str = "dwarf") -> dict[str, PaholeStruct | None]:
    """pahole's view of each named struct (None where pahole did not print it), read from the
    file's DWARF (``fmt="dwarf"``) or its BTF (``"btf"``)."""
    exe = pahole_path()
    if exe is None:
        raise ToolMissing("pahole", PACKAGE)
    if not names:
        return {}
    args = [exe, "-F", fmt, "-C", ",".join(names), str(path)]
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        raise InputError(f"pahole timed out after {timeout:.0f} s on {path}") from None
    except OSError as e:
        raise InputError(f"pahole failed to start: {e}") from None
    got = parse(r.stdout)
    return {n: got.get(n) for n in names}


def identity() -> str | None:
    """Which pahole would run: its real path, size and mtime (no subprocess; None if not installed).

    Cached pahole answers are keyed by this, so a warm run needs no ``pahole --version``.
    """
    import os

    exe = pahole_path()
    if exe is None:
        return None
    real = os.path.realpath(exe)
    try:
        st = os.stat(real)
    except OSError:
        return None
    return f"{real}|{st.st_size}|{st.st_mtime_ns}"


class Running:
    """``pahole -F FMT -C names path`` (and ``--version`` when asked) started now, read by :meth:`result`.

    So pahole reads the DWARF (or, ``fmt="btf"``, the BTF pahole itself generated from it at
    build time: the same layouts in a tenth of the time) on one core while scopecheck reads
    the DWARF on another.
    """

    def __init__(self, path, names: list[str], want_version: bool, timeout: float = 120, fmt: str = "dwarf"):
        exe = pahole_path()
        if exe is None:
            raise ToolMissing("pahole", PACKAGE)
        self.path, self.names, self.timeout = path, list(names), timeout
        try:
            self._ver = subprocess.Popen([exe, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True) if want_version else None
            self._run = subprocess.Popen([exe, "-F", fmt, "-C", ",".join(self.names), str(path)],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                         errors="replace") if self.names else None
        except OSError as e:
            raise InputError(f"pahole failed to start: {e}") from None

    def cancel(self) -> None:
        for p in (self._ver, self._run):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    def result(self) -> tuple[str | None, dict[str, PaholeStruct | None]]:
        """(version or None if not asked, {name: PaholeStruct or None})."""
        ver = None
        try:
            if self._ver is not None:
                out, err = self._ver.communicate(timeout=10)
                ver = out.strip() or err.strip()
            got: dict = {}
            if self._run is not None:
                out, _ = self._run.communicate(timeout=self.timeout)
                got = parse(out)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise InputError(f"pahole timed out after {self.timeout:.0f} s on {self.path}") from None
        return ver, {n: got.get(n) for n in self.names}
