"""What a TARGET argument names: a vmlinux, an object such as kvm_nvhe.o, or a build dir (O=)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scopecheck.errors import InputError

KVM_NVHE_O = Path("arch/arm64/kvm/hyp/nvhe/kvm_nvhe.o")
REPO_ROOT = Path(__file__).resolve().parent.parent
#: the embedded default target: the mini hyp fixture (see fixtures/README.md)
DEFAULT_FIXTURE = REPO_ROOT / "fixtures" / "mini_hyp" / "build" / "after-dwarf5" / "kvm_nvhe.o"


@dataclass(frozen=True, slots=True)
class BuildTarget:
    """A resolved target: the ELF to read and, for a build dir, where things are."""

    arg: str
    elf: Path
    build_dir: Path | None = None
    vmlinux: Path | None = None
    kvm_nvhe_o: Path | None = None


def resolve(arg: str | Path) -> BuildTarget:
    from scopecheck.paths import check_input_file

    p = Path(arg)
    check_input_file(p, what="kernel image, object or build directory", dir_ok=True)
    if p.is_dir():
        vml = p / "vmlinux"
        nvhe = p / KVM_NVHE_O
        vml = vml if vml.is_file() else None
        nvhe = nvhe if nvhe.is_file() else None
        if vml is None and nvhe is None:
            raise InputError(f"{p}: not a kernel build directory (no vmlinux, no {KVM_NVHE_O})")
        return BuildTarget(str(arg), vml or nvhe, build_dir=p, vmlinux=vml, kvm_nvhe_o=nvhe)
    return BuildTarget(str(arg), p)


def default_target() -> BuildTarget:
    if not DEFAULT_FIXTURE.is_file():
        raise InputError("no TARGET given and the embedded fixture is missing; pass a vmlinux, "
                         "a kvm_nvhe.o or a kernel build directory")
    return BuildTarget(str(DEFAULT_FIXTURE), DEFAULT_FIXTURE)
