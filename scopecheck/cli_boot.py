"""``scopecheck boot IMAGE``: boot a kernel under QEMU and check that KVM works in it.

Registered in cli.py as ``app.command("boot")(boot_cmd)``. Report (text or JSON)
on stdout; progress on stderr. Exit 0 all checks pass, 1 a check failed
(panic, timeout, KVM unavailable included), 2 an error.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from scopecheck import jsontext
from scopecheck.progress import StatusLine
from scopecheck.errors import ScopecheckError


class BootMode(str, Enum):
    protected = "protected"
    nvhe = "nvhe"


class BootFormat(str, Enum):
    text = "text"
    json = "json"


class _Status(StatusLine):
    """Boot progress; the per-second "booting (N s)" ticks only on a terminal."""

    def __init__(self, quiet: bool):
        super().__init__(quiet, "scopecheck boot")

    def plain(self, msg: str) -> str | None:
        return None if msg.startswith("booting (") else msg


def boot_cmd(
    image: Path = typer.Argument(..., metavar="IMAGE", show_default=False,
                                 help="arm64 kernel Image to boot (arch/arm64/boot/Image, or the Image from "
                                      "`scopecheck kernel fetch`)."),
    vmlinux: Optional[Path] = typer.Option(
        None, "--vmlinux", metavar="VMLINUX",
        help="The matching vmlinux with DWARF: its struct sizes must equal the running kernel's BTF."),
    mode: BootMode = typer.Option(BootMode.protected, "--mode", case_sensitive=False,
                                  help="kvm-arm.mode to boot with: protected (pKVM) or nvhe."),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1, metavar="S",
                                  help="Kill QEMU (and fail) after S seconds."),
    fmt: BootFormat = typer.Option(BootFormat.text, "--format", "-f", case_sensitive=False,
                                   help="Report on stdout: text, or json (every check with name, passed, evidence)."),
    console: Optional[Path] = typer.Option(None, "--console", metavar="FILE",
                                           help="Also write the whole serial console to FILE."),
    append: str = typer.Option("", "--append", metavar="ARGS",
                               help="Extra kernel command line arguments, after scopecheck's own "
                                    "(console=ttyAMA0 kvm-arm.mode=MODE rdinit=/init panic=-1); the last one wins."),
    el2: bool = typer.Option(True, "--el2/--no-el2",
                             help="Boot at EL2 (QEMU virtualization=on). --no-el2 shows a kernel without KVM."),
    trace_hyp: bool = typer.Option(False, "--trace-hyp",
                                   help="Record which hyp functions ran at EL2 (QEMU exec log; needs --vmlinux) "
                                        "and check each is a node of the static call graph. Slower."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Boot IMAGE under qemu-system-aarch64 with kvm-arm.mode=protected|nvhe and check that KVM works.

    Checks: hyp initialised in the requested mode; /dev/kvm present; a guest ran and exited with the
    expected MMIO writes; BTF struct sizes of the running kernel equal the DWARF sizes of --vmlinux.
    """
    from scopecheck.boot import boot, format_text

    try:
        with _Status(quiet) as status:
            rep = boot(image, vmlinux, mode.value, timeout, el2=el2, console_file=console,
                       trace_hyp=trace_hyp, append_extra=append, progress=status)
    except ScopecheckError as e:
        typer.echo("scopecheck: " + " ".join(str(e).split()), err=True)
        raise typer.Exit(getattr(e, "exit_code", 2))
    if fmt is BootFormat.json:
        sys.stdout.write(jsontext.dumps(rep.to_dict()) + "\n")
    else:
        sys.stdout.write(format_text(rep))
    raise typer.Exit(0 if rep.passed else 1)
