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
