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


def run(path: str | PathLike, names: list[str], timeout: float = 120) -> dict[str, PaholeStruct | None]:
    """pahole's view of each named struct (None where pahole did not print it)."""
    exe = pahole_path()
    if exe is None:
        raise ToolMissing("pahole", PACKAGE)
    if not names:
        return {}
    args = [exe, "-F", "dwarf", "-C", ",".join(names), str(path)]
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        raise InputError(f"pahole timed out after {timeout:.0f} s on {path}") from None
    except OSError as e:
        raise InputError(f"pahole failed to start: {e}") from None
    got = parse(r.stdout)
    return {n: got.get(n) for n in names}
