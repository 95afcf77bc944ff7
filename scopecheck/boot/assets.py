"""What the booted kernel runs: Debian's busybox-static, the kvm_smoke program, an initramfs.

Everything is built or downloaded once into ``cache_dir("boot")``::

    <cache>/boot/
        busybox/busybox-static_<version>/bin/busybox   extracted with dpkg-deb -x (never installed)
        guest/kvm_smoke-<sha>                          static aarch64 build of data/guest/kvm_smoke.c
        initramfs/<sha>.cpio.gz                        keyed by busybox, program and init script

The initramfs is written here (cpio "newc" in Python: every file owned by root,
no cpio or fakeroot needed).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

from scopecheck.errors import ScopecheckError, ToolMissing
from scopecheck.paths import atomic_write_bytes, cache_dir

GUEST_SOURCE = Path(__file__).resolve().parent.parent / "data" / "guest" / "kvm_smoke.c"
CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_CC_PACKAGE = "gcc-aarch64-linux-gnu"
BUSYBOX_PACKAGE = "busybox-static"
#: structs whose BTF size the guest prints (the ones `scopecheck size` reports by default)
BTF_STRUCTS = ("kvm_vcpu", "kvm_cpu_context", "vcpu_hyp_state", "pkvm_hyp_vcpu")
MARK = "SCOPECHECK: "

INIT_SCRIPT = """#!/bin/sh
# scopecheck boot: runs as PID 1 from the initramfs, prints SCOPECHECK: lines, powers off.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
echo "SCOPECHECK: init started"
echo "SCOPECHECK: cmdline $(cat /proc/cmdline)"
grep -i "kernel code" /proc/iomem | sed 's/^ */SCOPECHECK: iomem /'
if [ -c /dev/kvm ]; then
    echo "SCOPECHECK: kvm present $(ls -l /dev/kvm)"
else
    echo "SCOPECHECK: kvm absent"
fi
if [ -e /sys/kernel/btf/vmlinux ]; then
    echo "SCOPECHECK: btf present $(wc -c < /sys/kernel/btf/vmlinux) bytes"
else
    echo "SCOPECHECK: btf absent"
fi
if [ -c /dev/kvm ]; then
    markers=""
    if grep -q scopecheck.trace /proc/cmdline; then
        # the host turns QEMU's exec log on, then answers on the console
        echo "SCOPECHECK: trace wait"
        read -t 60 go
        echo "SCOPECHECK: trace go $go"
        markers="--markers"
    fi
    echo "SCOPECHECK: kvm run begin"
    /kvm_smoke run $markers
    echo "SCOPECHECK: kvm run status $?"
fi
/kvm_smoke btf {structs}
echo "SCOPECHECK: done"
echo o > /proc/sysrq-trigger 2>/dev/null
poweroff -f
"""


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- busybox


def busybox(progress=None) -> Path:
    """Debian's arm64 busybox-static, downloaded with apt and extracted (not installed)."""
    from scopecheck.kernels import debian as deb

    root = cache_dir("boot") / "busybox"
    existing = sorted(root.glob(f"{BUSYBOX_PACKAGE}_*/bin/busybox"))
    if existing:
        return existing[-1]
    deb._check_architecture()
    rec = deb._pick(deb._show(BUSYBOX_PACKAGE), None)
    if rec is None:
        raise ScopecheckError(f"apt knows no {BUSYBOX_PACKAGE}:arm64 package (run apt-get update)")
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise ToolMissing("dpkg-deb", "dpkg")
    final = root / rec.cache_name
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".tmp-") as tmp:
        work = Path(tmp)
        pkg = deb._download(rec, work, progress)
        deb._verify_deb(pkg, rec, progress)
        out = work / "x"
        proc = subprocess.run([dpkg_deb, "-x", str(pkg), str(out)], capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0 or not (out / "bin" / "busybox").is_file():
            raise ScopecheckError(f"dpkg-deb -x {pkg.name} failed: {proc.stderr.strip() or 'no bin/busybox'}")
        try:
            out.rename(final)
        except OSError:
            if not (final / "bin" / "busybox").is_file():
                raise
    return final / "bin" / "busybox"


# --------------------------------------------------------------------------- guest program


def guest_program(source: Path = GUEST_SOURCE) -> Path:
    """Cross-compile kvm_smoke.c (static, -O2) into the cache, keyed by the source's hash."""
    src = source.read_bytes()
    key = _sha(src, CROSS_CC.encode())[:16]
    out = cache_dir("boot") / "guest" / f"kvm_smoke-{key}"
    if out.is_file():
        return out
    cc = shutil.which(CROSS_CC)
    if cc is None:
        raise ToolMissing(CROSS_CC, CROSS_CC_PACKAGE)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-") as tmp:
        tmp_out = Path(tmp) / "kvm_smoke"
        proc = subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(tmp_out), str(source)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
            hint = ""
            if "No such file" in proc.stderr or "static" in proc.stderr:
                hint = " (static linking needs the Debian package libc6-dev-arm64-cross)"
            raise ScopecheckError(f"building {source.name} with {CROSS_CC} failed: {first}{hint}")
        tmp_out.replace(out)
    return out


# --------------------------------------------------------------------------- initramfs


class _Newc:
    """A cpio archive in the "newc" format the kernel unpacks (usr/gen_init_cpio's format)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name_b), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, 0o020600, 0, 0, 1, 0, 0, 0, 0, major, minor, len(name_b), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self._pad()

    def finish(self) -> bytes:
        self.ino = 0
        self._entry("TRAILER!!!", 0, nlink=1)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def init_script(structs=BTF_STRUCTS) -> str:
    return INIT_SCRIPT.format(structs=" ".join(structs))


def initramfs(busybox_path: Path, program: Path, structs=BTF_STRUCTS) -> Path:
    """A gzip'd newc cpio with /bin/busybox, /bin/sh, /init and /kvm_smoke (cached by content)."""
    bb = busybox_path.read_bytes()
    prog = program.read_bytes()
    init = init_script(structs).encode()
    key = _sha(bb, prog, init, b"newc-1")[:16]
    out = cache_dir("boot") / "initramfs" / f"{key}.cpio.gz"
    if out.is_file():
        return out
    a = _Newc()
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "usr", "usr/bin", "usr/sbin"):
        a.dir(d)
    a.chardev("dev/console", 5, 1)
    a.file("bin/busybox", bb)
    a.symlink("bin/sh", "busybox")
    a.file("init", init)
    a.file("kvm_smoke", prog)
    atomic_write_bytes(out, gzip.compress(a.finish(), compresslevel=6, mtime=0))
    return out
