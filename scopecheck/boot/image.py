"""Is IMAGE a bootable arm64 kernel Image? (checked before QEMU is started)."""

from __future__ import annotations

import gzip
from pathlib import Path

from scopecheck.errors import InputError

ARM64_MAGIC = b"ARM\x64"
ARM64_MAGIC_OFFSET = 0x38
_ELF_MACHINES = {0x03: "x86 (i386)", 0x28: "32-bit ARM", 0x3E: "x86-64", 0xB7: "arm64", 0xF3: "RISC-V"}


class WrongArchitecture(InputError):
    """IMAGE is a kernel, but not one qemu-system-aarch64 can boot."""


def check_image(path: Path) -> str:
    """Return a short description of the arm64 Image at ``path``; raise InputError otherwise."""
    from scopecheck.paths import check_input_file

    p = Path(path)
    if p.is_dir():
        cand = p / "arch" / "arm64" / "boot" / "Image"
        raise InputError(f"{p}: is a directory" + (f"; did you mean {cand}?" if cand.is_file() else ""))
    check_input_file(p, what="kernel Image")  # before open: a FIFO or /dev/zero must not block
    with open(p, "rb") as f:
        head = f.read(0x40)
    what = "Image"
    if head[:2] == b"\x1f\x8b":  # Debian's vmlinuz: QEMU's loader inflates gzip'd arm64 Images itself
        try:
            with gzip.open(p, "rb") as g:
                head = g.read(0x40)
        except (OSError, EOFError) as e:
            raise InputError(f"{p}: gzip-compressed but unreadable: {e}") from None
        what = "gzip'd Image"
    if head[:4] == b"\x7fELF":
        machine = int.from_bytes(head[18:20], "little") if head[5] == 1 else int.from_bytes(head[18:20], "big")
        arch = _ELF_MACHINES.get(machine, f"machine {machine:#x}")
        if machine == 0xB7:
            raise InputError(f"{p}: an arm64 ELF (vmlinux?), not a bootable Image; pass arch/arm64/boot/Image "
                             "as IMAGE and the vmlinux with --vmlinux")
        raise WrongArchitecture(f"{p}: an ELF file for {arch}, not an arm64 kernel Image")
    if len(head) < 0x40 or head[ARM64_MAGIC_OFFSET:ARM64_MAGIC_OFFSET + 4] != ARM64_MAGIC:
        hint = ""
        try:
            with open(p, "rb") as f:
                boot = f.read(0x210)
            if boot[0x202:0x206] == b"HdrS":
                hint = " (it is an x86 bzImage)"
            elif boot[0x24:0x28] == b"\x18\x28\x6f\x01":
                hint = " (it is a 32-bit ARM zImage)"
            elif boot[0x30:0x35] == b"RISCV" or boot[0x38:0x3c] == b"RSC\x05":
                hint = " (it is a RISC-V Image)"
        except OSError:
            pass
        if hint:
            raise WrongArchitecture(f"{p}: not an arm64 kernel Image{hint}")
        raise InputError(f"{p}: not an arm64 kernel Image (no 'ARM\\x64' magic at offset 0x38)")
    size = p.stat().st_size
    if what == "Image":
        _check_pe_size(p, size)
    return f"arm64 {what}, {size / 1e6:.1f} MB"


def _check_pe_size(p: Path, size: int) -> None:
    """An Image with the EFI stub carries a PE/COFF header: its sections say how long the file must be."""
    import struct

    with open(p, "rb") as f:
        head = f.read(4096)
    if head[:2] != b"MZ" or len(head) < 0x40:
        return
    pe = struct.unpack_from("<I", head, 0x3C)[0]
    if pe + 24 > len(head) or head[pe:pe + 4] != b"PE\0\0":
        return
    nsec = struct.unpack_from("<H", head, pe + 6)[0]
    opt_size = struct.unpack_from("<H", head, pe + 20)[0]
    sec = pe + 24 + opt_size
    need = 0
    for i in range(nsec):
        o = sec + 40 * i
        if o + 40 > len(head):
            return
        raw_size, raw_ptr = struct.unpack_from("<II", head, o + 16)
        need = max(need, raw_ptr + raw_size)
    if need > size:
        raise InputError(f"{p}: truncated or corrupted arm64 Image: its PE/COFF header needs {need} bytes, "
                         f"the file has {size}")
