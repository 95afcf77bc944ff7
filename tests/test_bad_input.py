"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing on stdout."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import FIXTURE_BUILD, fixture_variants, run_cli
from scopecheck.binary.elf import ElfImage
from scopecheck.errors import InputError


def _fixture_obj():
    v = fixture_variants()
    if not v:
        pytest.skip("fixture objects not built")
    return FIXTURE_BUILD / v[0] / "kvm_nvhe.o"


def assert_one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("scopecheck: ")
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]


def test_missing_file(tmp_path):
    assert_one_line_error(run_cli("size", str(tmp_path / "nope")), "no such file")


def test_directory_without_vmlinux(tmp_path):
    assert_one_line_error(run_cli("size", str(tmp_path)), "not a kernel build directory")


def test_not_elf(tmp_path):
    f = tmp_path / "vmlinux"
    f.write_text("this is not an ELF file, but it is long enough to have a header" * 4)
    assert_one_line_error(run_cli("size", str(f)), "not an ELF")


def test_x86_64_elf():
    assert_one_line_error(run_cli("size", "/bin/ls"), "x86-64", "not AArch64")


def test_aarch64_elf_without_dwarf(tmp_path):
    objcopy = shutil.which("aarch64-linux-gnu-objcopy")
    if objcopy is None:
        pytest.skip("aarch64-linux-gnu-objcopy (binutils-aarch64-linux-gnu) not installed")
    out = tmp_path / "stripped.o"
    subprocess.run([objcopy, "--strip-debug", str(_fixture_obj()), str(out)], check=True)
    assert_one_line_error(run_cli("size", str(out)), "no DWARF")


@pytest.mark.parametrize("keep", [63, 64, 4096, 0.5])
def test_truncated_elf(tmp_path, keep):
    src = _fixture_obj().read_bytes()
    n = int(len(src) * keep) if isinstance(keep, float) else keep
    f = tmp_path / "trunc.o"
    f.write_bytes(src[:n])
    r = run_cli("size", "--no-cache", str(f))
    assert_one_line_error(r)
    assert any(w in r.stderr for w in ("truncated", "not an ELF", "unreadable")), r.stderr


def test_struct_not_found():
    assert_one_line_error(run_cli("size", "--struct", "no_such_struct", str(_fixture_obj())),
                          "no_such_struct", "not found")


def test_build_dir_with_only_kvm_nvhe_o(tmp_path):
    d = tmp_path / "arch" / "arm64" / "kvm" / "hyp" / "nvhe"
    d.mkdir(parents=True)
    (d / "kvm_nvhe.o").write_bytes(_fixture_obj().read_bytes())
    r = run_cli("size", "--format", "json", "--no-pahole", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert '"kvm_vcpu"' in r.stdout


def test_library_raises_input_error(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"\x7fELF" + b"\0" * 100)
    with pytest.raises(InputError):
        ElfImage(f)


def test_usage_error_exit_2():
    r = run_cli("size", "--format", "yaml")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- special files, every file argument
#
# A FIFO, /dev/zero, a character device, a socket, a directory, an unreadable file and a huge
# sparse file, given to every command argument that names a file: one line, exit 2, quickly;
# nothing may open (and block on) the path before its type is checked.

import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from conftest import ROOT  # noqa: E402

FIX_DIR = FIXTURE_BUILD / "after-dwarf5"
SPECIALS = ("fifo", "dev-zero", "char-device", "socket", "directory", "unreadable", "huge-sparse")


@pytest.fixture(scope="module")
def specials(tmp_path_factory):
    d = tmp_path_factory.mktemp("special")
    os.mkfifo(d / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(d / "socket"))
    (d / "directory").mkdir()
    with open(d / "huge-sparse", "wb") as f:
        f.truncate(64 << 30)  # 64 GiB, no blocks
    if os.geteuid() == 0:
        # root reads any mode-000 file, and cannot drop privileges here (the interpreter lives
        # under a private home): a regular file whose reading fails for root too is
        # /proc/self/clear_refs (mode 0200, open succeeds, read gives EINVAL)
        unreadable = Path("/proc/self/clear_refs")
    else:
        unreadable = d / "unreadable"
        unreadable.write_text("secret")
        unreadable.chmod(0)
    paths = {"fifo": d / "fifo", "dev-zero": Path("/dev/zero"), "char-device": Path("/dev/null"),
             "socket": d / "socket", "directory": d / "directory", "unreadable": unreadable,
             "huge-sparse": d / "huge-sparse"}
    yield paths
    sock.close()


#: (name, argv with {} for the bad path, kinds to skip because they are valid there)
COMMANDS = [
    ("size TARGET", ["size", "{}"], ()),
    ("callgraph TARGET", ["callgraph", "{}"], ()),
    ("callgraph --source", ["callgraph", str(FIX_DIR), "--source", "{}"], ("directory",)),
    ("callgraph --query PATH", ["callgraph", str(FIX_DIR), "--query", "{}"], ()),
    ("callgraph --baseline", ["callgraph", str(FIX_DIR), "--baseline", "{}"], ()),
    ("derive TARGET", ["derive", "{}"], ()),
    ("report TARGET", ["report", "{}", "--out", "{out}"], ()),
    ("report --query PATH", ["report", str(FIX_DIR), "--out", "{out}", "--query", "{}"], ()),
    ("report --boot", ["report", str(FIX_DIR), "--out", "{out}", "--boot", "{}"], ()),
    ("report --history", ["report", str(FIX_DIR), "--out", "{out}", "--history", "{}"], ()),
    ("diff A", ["diff", "{}", str(ROOT / "pyproject.toml")], ()),
    ("diff B", ["diff", str(ROOT / "pyproject.toml"), "{}"], ()),
    ("boot IMAGE", ["boot", "{}"], ()),
    ("boot --vmlinux", ["boot", "/dev/null", "--vmlinux", "{}"], ()),
    ("kernel build SRC", ["kernel", "build", "{}"], ()),
    ("kernel build --config", ["kernel", "build", str(ROOT), "--config", "{}"], ()),
    ("kernel build --patch", ["kernel", "build", str(ROOT), "--patch", "{}"], ()),
]


def _in_process(argv: list[str], capsys) -> tuple[int, str, str, float]:
    """``scopecheck ARGV`` through cli.main() in this process, with an alarm against a blocking open."""
    from scopecheck import cli

    def _hang(signum, frame):
        raise TimeoutError("blocked: the command opened a special file")

    old = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(20)
    saved = sys.argv
    sys.argv = ["scopecheck", *argv]
    t0 = time.perf_counter()
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        elapsed = time.perf_counter() - t0
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        sys.argv = saved
    out, err = capsys.readouterr()
    return code, out, err, elapsed


#: every (command, special file) pair but those where that kind of file is valid input
#: (a directory is a valid --source)
MATRIX = [pytest.param(kind, name, argv, id=f"{name}-{kind}")
          for name, argv, valid in COMMANDS for kind in SPECIALS if kind not in valid]


@pytest.mark.parametrize("kind,name,argv", MATRIX)
def test_special_file_matrix(specials, kind, name, argv, capsys, tmp_path):
    bad = str(specials[kind])
    args = [a.replace("{}", bad).replace("{out}", str(tmp_path / "out")) for a in argv]
    code, out, err, elapsed = _in_process(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (name, kind, code, out, err)
    assert len(lines) == 1 and lines[0].startswith("scopecheck: "), (name, kind, err)
    assert "Traceback" not in err and out == ""
    assert bad in lines[0] or Path(bad).name in lines[0], (name, kind, lines[0])
    assert elapsed < 2.0, f"{name} with a {kind}: {elapsed:.2f} s"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ("fifo", "dev-zero", "huge-sparse"))
def test_special_file_through_the_real_cli(specials, kind):
    """The same as a user sees it (a subprocess), for the cases that would block or stream forever."""
    t0 = time.perf_counter()
    r = run_cli("callgraph", str(specials[kind]), timeout=60)
    assert_one_line_error(r, str(specials[kind]))
    r = run_cli("size", str(FIX_DIR / "kvm_nvhe.o"), "--no-pahole", "--struct", "kvm_vcpu", timeout=60)
    assert r.returncode == 0, r.stderr
    startup = time.perf_counter() - t0
    assert startup < 30, startup


def test_a_command_whose_import_fails_is_listed_and_says_why():
    """The CLI never hides a command: a missing optional dependency is one line and exit 2 when it runs."""
    code = ("import sys\nsys.modules['scopecheck.cli_boot'] = None  # as if its import failed\n"
            "sys.argv = ['scopecheck'] + sys.argv[1:]\nfrom scopecheck.cli import main\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "boot" in r.stdout and "unavailable" in r.stdout
    r = subprocess.run([sys.executable, "-c", code, "boot", "Image", "--mode", "nvhe"], capture_output=True,
                       text=True, timeout=60)
    assert_one_line_error(r, "scopecheck boot", "unavailable", "scopecheck.cli_boot")
