"""The README must not drift from the tool.

* Every option in a command's ``--help`` is documented in the README, and every
  option the README documents for a command exists.
* Examples: a ```console block after ``<!-- readme-test: MODE -->`` holds ``$ command``
  lines, each followed by the output it prints. The test runs each command (bash, repo
  root, this venv's scopecheck first on PATH) and compares:
    exact               stdout must equal the lines shown;
    exact-if-same-build as exact, but skipped when the first output line names a
                        build-id other than the cached kernel's (Debian moved on);
    run                 exit status 0 only (the output shown varies: timings).
  ``python tests/test_readme.py --update`` rewrites the shown output from real runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```console\n(.*?)```\n", re.S)
COMMANDS = [["size"], ["callgraph"], ["derive"], ["narrow"], ["boot"], ["report"], ["diff"], ["kernel", "fetch"],
            ["kernel", "list"], ["kernel", "build"]]


def _env() -> dict:
    bindir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), COLUMNS="100",
                NO_COLOR="1")


def blocks(text: str):
    """(mode, [(command, expected_output)], span) for every tested block."""
    out = []
    for m in BLOCK.finditer(text):
        cmds: list[tuple[str, list[str]]] = []
        for line in m.group(2).splitlines():
            if line.startswith("$ "):
                cmds.append((line[2:], []))
            elif cmds:
                cmds[-1][1].append(line)
        out.append((m.group(1), cmds, m.span(2)))
    return out


def run(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), timeout=900)


def _normalize(s: str) -> list[str]:
    return [line.rstrip() for line in s.rstrip("\n").splitlines()]


def _cases():
    return [(mode, cmd, exp) for mode, cmds, _ in blocks(README.read_text()) for cmd, exp in cmds]


@pytest.mark.parametrize("mode,cmd,expected", _cases(), ids=[c[1][:60] for c in _cases()])
def test_readme_example(mode, cmd, expected):
    r = run(cmd)
    assert r.returncode == 0, f"{cmd}\n{r.stderr}"
    got = _normalize(r.stdout)
    if mode == "run":
        return
    if mode == "exact-if-same-build" and expected and got and expected[0] != got[0]:
        pytest.skip(f"README transcript is for another build ({expected[0]!r}); "
                    "refresh it with: python tests/test_readme.py --update")
    assert got == [line.rstrip() for line in expected], f"README output of `{cmd}` drifted; " \
        "refresh with: python tests/test_readme.py --update"


def _help_options(cmd: list[str]) -> set[str]:
    r = subprocess.run([sys.executable, "-m", "scopecheck", *cmd, "--help"], capture_output=True, text=True,
                       env=_env(), timeout=60)
    if r.returncode != 0:
        return set()
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", r.stdout)) - {"--help"}


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_options_documented(cmd):
    opts = _help_options(cmd)
    if not opts and cmd[-1] == "build":
        pytest.skip("no `kernel build` command in this tree")
    text = README.read_text()
    missing = sorted(o for o in opts if o not in text)
    assert not missing, f"`scopecheck {' '.join(cmd)}` options missing from README: {missing}"


def test_documented_size_options_exist():
    text = README.read_text()
    table = text.split("Options of `scopecheck size`:", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(?:-\w, )?(--[a-z][\w-]*)", table))
    documented |= set(re.findall(r"/ (--[a-z][\w-]*)", table))
    real = _help_options(["size"])
    assert documented, "README lost its size options table"
    assert documented <= real, f"README documents options `size` lacks: {sorted(documented - real)}"


def test_help_does_not_import_heavy_libraries():
    code = ("import sys\nsys.argv=['scopecheck','--help']\nfrom scopecheck import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "heavy=[m for m in ('pandas','matplotlib','clang','clang.cindex','networkx','capstone') "
            "if m in sys.modules]\nprint('HEAVY', heavy, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in r.stderr, r.stderr


def update() -> None:
    text = README.read_text()
    pieces, last = [], 0
    for mode, cmds, (lo, hi) in blocks(text):
        body = []
        for cmd, _ in cmds:
            r = run(cmd)
            if r.returncode != 0:
                raise SystemExit(f"`{cmd}` failed: {r.stderr}")
            out = _normalize(r.stdout)
            body.append(f"$ {cmd}\n" + ("\n".join(out) + "\n" if out else ""))
        pieces.append(text[last:lo] + "".join(body))
        last = hi
    pieces.append(text[last:])
    README.write_text("".join(pieces))


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        update()
    else:
        raise SystemExit("usage: python tests/test_readme.py --update")
