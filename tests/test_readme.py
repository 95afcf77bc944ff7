"""The README must not drift from the tool.

* Every option in a command's ``--help`` is documented in the README, and every
  option the README documents for a command exists.
* Examples: a ```console block after ``<!-- readme-test: MODE -->`` holds ``$ command``
  lines, each followed by the output it prints. The test runs each command (bash, repo
  root, this venv's scopecheck first on PATH) and compares:
    exact               stdout must equal the lines shown;
    exact-if-same-build as exact while the first output line names the same build; when
                        Debian (or the kernel build) moved on, the command is rerun with
                        --format json and what must hold on any build is checked instead
                        (size: every size equals pahole's on that file; callgraph: leaks
                        found, every one outside the query's scope; derive: only fields
                        outside kvm_cpu_context, laid out without overlap), never skipped;
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
            ["kernel", "list"], ["kernel", "build"], ["series"]]


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
    # an example may build a kernel, or wait on the cache's lock while another worker builds it
    return subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), timeout=2700)


def _normalize(s: str) -> list[str]:
    """Output lines as the README shows them: trailing blanks dropped, the home directory as ``~``
    (a transcript holds cache paths, and nobody else's home is /root)."""
    home = str(Path.home()).rstrip("/") + "/"
    return [line.rstrip().replace(home, "~/") for line in s.rstrip("\n").splitlines()]


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
        # another build than the transcript's: check what must hold on any build (and that the
        # text still has the transcript's shape); --update refreshes the transcript itself
        check_invariants(cmd, expected, got)
        return
    assert got == [line.rstrip() for line in expected], f"README output of `{cmd}` drifted; " \
        "refresh with: python tests/test_readme.py --update"


def _subcommand(cmd: str) -> str:
    m = re.match(r"scopecheck (\w+)", cmd)
    assert m, f"README example `{cmd}` is not a scopecheck command"
    return m.group(1)


def _json_of(cmd: str) -> dict:
    import json

    r = run(cmd + " --format json")
    assert r.returncode == 0, f"{cmd} --format json\n{r.stderr}"
    return json.loads(r.stdout)


def check_invariants(cmd: str, expected: list[str], got: list[str]) -> None:
    """What a real-kernel example must show on whatever build it runs on today."""
    sub = _subcommand(cmd)
    if sub == "size":
        d = _json_of(cmd)
        (t,) = d["targets"]
        assert t["pahole_version"], "pahole did not cross-check the sizes"
        assert t["mismatches"] == []
        for st in t["structs"]:
            assert st["pahole"] is not None and st["pahole"]["size"] == st["size"], st["name"]
            row = next((l for l in got if l.split()[:1] == [st["name"]]), None)
            assert row is not None and int(row.split()[1]) == st["size"], (st["name"], row)
        shown = {l.split()[0] for l in expected[3:] if re.match(r"^\w+\s+\d+", l)}
        assert shown <= {st["name"] for st in t["structs"]}, "a struct of the transcript is gone"
        assert got[-1].startswith("pahole ") and got[-1].endswith("sizes agree")
    elif sub == "callgraph":
        from scopecheck.query import load_query

        d = _json_of(cmd)
        q = load_query(d["query"]["id"])
        assert d["mode"] in expected[0] and d["mode"] in got[0]
        assert d["leaks"], "the transcript shows leaks; this build shows none"
        for l in d["leaks"]:
            assert l["file"] and l["line"] and l["chain"], l
            if l["kind"] == "field":
                assert q.is_allowed(l["root"], l["field"]) is not True, f"{l['root']}:{l['field']} is in scope"
        assert f"{len(d['leaks'])} leak(s):" in got
    elif sub == "derive":
        d = _json_of(cmd)
        assert d["members"], "nothing derived"
        end = 0
        for m in d["members"]:
            assert not (m["path"] == "arch.ctxt" or m["path"].startswith("arch.ctxt.")), m["path"]
            assert m["offset"] >= end and m["offset"] % max(m["align"], 1) == 0, m
            end = m["offset"] + m["size"]
        assert end <= d["size"] and d["reduced_scope"] == d["kvm_cpu_context"] + d["size"]
        assert got[-1].startswith("/* kvm_cpu_context ") and got[-2].startswith("};")
    else:
        raise AssertionError(f"no build-independent check for `scopecheck {sub}`: add one to "
                             "check_invariants or mark the README block exact/run")


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
