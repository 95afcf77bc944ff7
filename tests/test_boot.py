"""`scopecheck boot`: real boots under qemu-system-aarch64 (TCG), and the ways a boot fails.

One boot per image and mode (module-scoped fixtures): Debian's 6.1 cloud-arm64 Image with its
dbg vmlinux (~4-10 s), the pkvm-tiny build (~1 s). Skipped without qemu-system-aarch64 or the
aarch64 cross compiler.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
    reason="needs qemu-system-aarch64 (qemu-system-arm) and aarch64-linux-gnu-gcc")

CHECKS = ["hyp-initialised", "dev-kvm", "guest-mmio-exit", "btf-sizes-match-dwarf"]
_REGISTER = ("import sys, typer; from scopecheck.cli_boot import boot_cmd; "
             "app = typer.Typer(add_completion=False); app.command()(boot_cmd); app()")


def _registered() -> bool:
    if not hasattr(_registered, "v"):
        _registered.v = run_cli("boot", "--help", timeout=60).returncode == 0
    return _registered.v


def boot_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``scopecheck boot ARGS`` (through ``python -m scopecheck`` once cli.py registers it)."""
    if _registered():
        return run_cli("boot", *args, env=env, timeout=timeout)
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", _REGISTER, *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=ROOT)


def _qemu_alive_with(path: Path) -> list[int]:
    """PIDs of qemu processes whose command line names ``path`` (must be none after a boot)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and b"qemu-system" in cmd[0] and str(path).encode() in cmd:
            pids.append(int(d.name))
    return pids


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def _by_name(rep: dict) -> dict:
    return {c["name"]: c for c in rep["checks"]}


# --------------------------------------------------------------------------- kernels


@pytest.fixture(scope="module")
def debian61():
    from kernel_cache import debian_kernel

    return debian_kernel("6.1")


@pytest.fixture(scope="module")
def tiny61():
    from build_cache import pkvm_tiny_61

    k = pkvm_tiny_61()
    if k.image is None or not Path(k.image).is_file():
        pytest.skip("the pkvm-tiny build has no Image")
    return k


@pytest.fixture(scope="module")
def debian61_boot(debian61):
    t = time.monotonic()
    proc = boot_cli(str(debian61.image), "--vmlinux", str(debian61.vmlinux), "--format", "json", "-q",
                    "--timeout", "180")
    return proc, time.monotonic() - t


@pytest.fixture(scope="module")
def tiny61_boot(tiny61):
    t = time.monotonic()
    proc = boot_cli(str(tiny61.image), "--vmlinux", str(tiny61.vmlinux), "--format", "json", "-q",
                    "--timeout", "60")
    return proc, time.monotonic() - t


# --------------------------------------------------------------------------- passing boots


def test_debian_61_protected_boot(debian61_boot, debian61):
    proc, seconds = debian61_boot
    rep = _json(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rep["status"] == "completed" and rep["passed"] is True and rep["mode"] == "protected"
    checks = _by_name(rep)
    assert list(checks) == CHECKS
    for c in rep["checks"]:
        assert c["passed"] is True and c["evidence"], c
    assert any("Protected nVHE mode initialized successfully" in ln for ln in checks["hyp-initialised"]["evidence"])
    ev = checks["guest-mmio-exit"]["evidence"]
    assert any("reason MMIO write 1 addr 0x10000 len 8 data 0xc0ffee42" in ln for ln in ev)
    # Debian 6.1: BTF and DWARF both say 9680 / 1824, neither has vcpu_hyp_state / pkvm_hyp_vcpu
    assert "kvm_vcpu 9680" in checks["btf-sizes-match-dwarf"]["detail"]
    assert "kvm_cpu_context 1824" in checks["btf-sizes-match-dwarf"]["detail"]
    assert "6.1.0-" in rep["kernel"] and "cloud-arm64" in rep["kernel"]
    assert rep["timings"]["hyp_initialised"] < rep["timings"]["guest_mmio_exit"] <= rep["seconds"]
    assert seconds < 120


def test_pkvm_tiny_protected_boot(tiny61_boot, tiny61):
    proc, seconds = tiny61_boot
    rep = _json(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rep["status"] == "completed" and rep["passed"] is True
    assert [c["name"] for c in rep["checks"]] == CHECKS
    # the tiny kernel is built with BTF when pahole allows; without it the size check is a skip
    btf = _by_name(rep)["btf-sizes-match-dwarf"]
    assert btf["status"] in ("pass", "skip"), btf
    assert seconds < 60


def test_pkvm_tiny_nvhe_text(tiny61):
    proc = boot_cli(str(tiny61.image), "--mode", "nvhe", "--timeout", "60", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert ": nvhe, completed in " in out.splitlines()[0]
    assert "PASS  hyp-initialised: hyp initialised in nvhe mode" in out
    assert "| kvm [1]: Hyp mode initialized successfully" in out
    assert "Protected" not in out
    assert out.rstrip().endswith("result: all checks passed")


# --------------------------------------------------------------------------- findings (exit 1)


def test_wrong_vmlinux_is_a_size_mismatch(tiny61, debian61):
    """BTF of the tiny kernel against DWARF of Debian's vmlinux: kvm_vcpu 9120 != 9680."""
    proc = boot_cli(str(tiny61.image), "--vmlinux", str(debian61.vmlinux), "--format", "json", "-q",
                    "--timeout", "60")
    rep = _json(proc)
    assert proc.returncode == 1
    btf = _by_name(rep)["btf-sizes-match-dwarf"]
    if btf["status"] == "skip" or "no /sys/kernel/btf" in btf["detail"]:
        pytest.skip("the pkvm-tiny build has no BTF")
    assert btf["passed"] is False and "kvm_vcpu: BTF 9120, DWARF 9680" in btf["detail"]
    assert _by_name(rep)["guest-mmio-exit"]["passed"] is True


def test_kvm_unavailable_without_el2(tiny61):
    proc = boot_cli(str(tiny61.image), "--no-el2", "--format", "json", "-q", "--timeout", "60")
    rep = _json(proc)
    assert proc.returncode == 1
    assert rep["status"] == "kvm-unavailable"
    checks = _by_name(rep)
    assert checks["dev-kvm"]["passed"] is False
    assert any("HYP mode not available" in ln for ln in checks["hyp-initialised"]["evidence"])
    assert checks["guest-mmio-exit"]["detail"] == "not run: /dev/kvm missing"


def test_kernel_panic_is_reported(tiny61, tmp_path):
    """No init to run: the kernel panics, QEMU exits (panic=-1, -no-reboot), status 'panic', exit 1."""
    image = tmp_path / "Image"  # a path of our own, to look for a leftover QEMU by
    image.symlink_to(tiny61.image)
    proc = boot_cli(str(image), "--append", "rdinit=/nonexistent init=/nonexistent", "--format", "json",
                    "-q", "--timeout", "60")
    rep = _json(proc)
    assert proc.returncode == 1
    assert rep["status"] == "panic" and rep["seconds"] < 30
    panic = _by_name(rep)["no-panic"]
    assert panic["passed"] is False
    assert panic["evidence"][-1].endswith("Kernel panic - not syncing: Requested init /nonexistent failed (error -2).")
    assert _by_name(rep)["dev-kvm"]["detail"] == "init not reached: the kernel panicked"
    assert not _qemu_alive_with(image)


def test_too_short_timeout_kills_qemu(debian61, tmp_path):
    image = tmp_path / "Image"
    image.symlink_to(debian61.image)
    t = time.monotonic()
    proc = boot_cli(str(image), "--timeout", "1.5", "--format", "json", "-q")
    elapsed = time.monotonic() - t
    rep = _json(proc)
    assert proc.returncode == 1
    assert rep["status"] == "timeout" and rep["passed"] is False
    assert rep["seconds"] < 1.5 + 1.0
    assert _by_name(rep)["finished-in-time"]["passed"] is False
    assert elapsed < 30  # interpreter start + DWARF-free run: QEMU itself never outlives --timeout
    assert not _qemu_alive_with(image)


def test_corrupted_image_body_fails_cleanly(tiny61, tmp_path):
    """Header intact, code garbage: QEMU starts, the kernel never prints; killed at --timeout."""
    data = bytearray(Path(tiny61.image).read_bytes())
    data[0x1000:len(data) // 2] = b"\xff" * (len(data) // 2 - 0x1000)
    bad = tmp_path / "Image"
    bad.write_bytes(bytes(data))
    proc = boot_cli(str(bad), "--timeout", "4", "--format", "json", "-q")
    rep = _json(proc)
    assert proc.returncode == 1, proc.stderr
    assert rep["status"] in ("no-output", "timeout", "panic", "exited-early")
    assert rep["seconds"] < 5.5
    assert not _qemu_alive_with(bad)


# --------------------------------------------------------------------------- errors (exit 2)


def test_truncated_image_is_an_error(debian61, tmp_path):
    bad = tmp_path / "Image"
    with open(debian61.image, "rb") as f:
        bad.write_bytes(f.read(4_000_000))
    proc = boot_cli(str(bad), "-q")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("scopecheck: ") and "truncated or corrupted arm64 Image" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_image_without_magic_is_an_error(tiny61, tmp_path):
    data = bytearray(Path(tiny61.image).read_bytes()[:1 << 20])
    data[0x38:0x3C] = b"\0\0\0\0"
    bad = tmp_path / "Image"
    bad.write_bytes(bytes(data))
    proc = boot_cli(str(bad), "-q")
    assert proc.returncode == 2
    assert "not an arm64 kernel Image" in proc.stderr


def test_wrong_architecture_is_an_error():
    host_elf = Path(sys.executable).resolve()
    proc = boot_cli(str(host_elf), "-q")
    assert proc.returncode == 2
    assert "not an arm64 kernel Image" in proc.stderr and "ELF file for" in proc.stderr


def test_vmlinux_as_image_is_an_error(tiny61):
    proc = boot_cli(str(tiny61.vmlinux), "-q")
    assert proc.returncode == 2
    assert "not a bootable Image" in proc.stderr


def test_missing_qemu_is_an_error(tiny61, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = boot_cli(str(tiny61.image), "-q", env={"PATH": str(empty)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("scopecheck: qemu-system-aarch64 not found "
                                   "(install the Debian package 'qemu-system-arm')")


def test_bad_mode_is_a_usage_error(tiny61):
    proc = boot_cli(str(tiny61.image), "--mode", "vhe")
    assert proc.returncode == 2


# --------------------------------------------------------------------------- pieces


def test_initramfs_is_a_newc_archive():
    from scopecheck.boot import assets

    ird = assets.initramfs(assets.busybox(), assets.guest_program())
    raw = gzip.decompress(ird.read_bytes())
    assert raw.startswith(b"070701")
    if shutil.which("cpio"):
        names = subprocess.run(["cpio", "-t", "--quiet"], input=raw, capture_output=True).stdout.decode().split()
        for n in ("init", "bin/busybox", "bin/sh", "kvm_smoke", "dev/console"):
            assert n in names
    assert b"kvm-arm" not in raw[:200]


def test_guest_program_is_static_aarch64():
    from scopecheck.boot import assets

    prog = assets.guest_program()
    head = prog.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 0xB7
    assert b"INTERP" not in subprocess.run(["readelf", "-l", str(prog)], capture_output=True).stdout \
        if shutil.which("readelf") else True


def test_btf_check_logic():
    from scopecheck.boot.checks import btf_check
    from scopecheck.boot.qemu import QemuRun

    run = QemuRun(argv=[], console=["SCOPECHECK: btf struct kvm_vcpu size 100 members 3",
                                    "SCOPECHECK: btf struct pkvm_hyp_vcpu absent", "SCOPECHECK: done"])
    assert btf_check(run, {"kvm_vcpu": 100, "pkvm_hyp_vcpu": None}, "v").passed is True
    bad = btf_check(run, {"kvm_vcpu": 100, "pkvm_hyp_vcpu": 120}, "v")
    assert bad.passed is False and "pkvm_hyp_vcpu: BTF absent, DWARF 120" in bad.detail
    assert btf_check(run, None, None).passed is None


# --------------------------------------------------------------------------- stretch: EL2 trace


def test_trace_hyp_functions_are_call_graph_nodes(tiny61):
    """--trace-hyp: the hyp functions QEMU saw at EL2 between kvm_smoke's markers, mapped via --vmlinux."""
    proc = boot_cli(str(tiny61.image), "--vmlinux", str(tiny61.vmlinux), "--trace-hyp", "--format", "json", "-q",
                    "--timeout", "120")
    rep = _json(proc)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    t = rep["trace"]
    assert t["markers"] is True and t["guest_blocks"] >= 2 and t["el2_blocks"] > 0
    assert t["log_events"] == ["exec log on", "exec log off"]
    names = {f["name"] for f in t["functions"]}
    # the world switch and the MMIO data abort must have run at EL2
    assert {"__kvm_vcpu_run", "__guest_enter", "__guest_exit", "kvm_hyp_handle_dabt_low"} <= names
    assert t["not_in_call_graph"] == []
    check = _by_name(rep)["hyp-trace-in-call-graph"]
    assert check["passed"] is True and any("EL2 ran __kvm_vcpu_run" in ln for ln in check["evidence"])


def test_trace_hyp_needs_vmlinux(tiny61):
    proc = boot_cli(str(tiny61.image), "--trace-hyp", "-q")
    assert proc.returncode == 2 and "--trace-hyp needs --vmlinux" in proc.stderr
