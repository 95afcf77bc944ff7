"""The ``size`` job as a library call: struct sizes from DWARF, cross-checked with pahole."""

from __future__ import annotations

from dataclasses import dataclass, field

from scopecheck.errors import InputError, ToolMissing
from scopecheck.layout import DEFAULT_STRUCTS, REQUIRED_STRUCTS
from scopecheck.model import PaholeStruct, StructLayout
from scopecheck.targets import BuildTarget

SCHEMA_VERSION = 1
#: where the RFC's vcpu_hyp_state fields live in kernels that do not group them (6.1, 6.12)
RFC_LOOSE_FIELDS = ("arch.hcr_el2", "arch.mdcr_el2", "arch.vsesr_el2", "arch.fault",
                    "arch.cflags", "arch.iflags", "arch.sflags", "arch.flags")


@dataclass(slots=True)
class SizeReport:
    target: BuildTarget
    build_id: str | None
    layouts: dict[str, StructLayout]            # found structs, in request order
    absent: list[str]                           # optional default structs this build lacks
    pahole: dict[str, PaholeStruct | None] | None = None
    pahole_version: str | None = None
    pahole_note: str | None = None
    pahole_format: str | None = None  # "BTF" (the file's .BTF section) or "DWARF": what pahole read
    mismatches: list[str] = field(default_factory=list)

    @property
    def kvm_vcpu_size(self) -> int | None:
        v = self.layouts.get("kvm_vcpu")
        return v.size if v else None

    def pct_of_kvm_vcpu(self, name: str) -> float | None:
        base = self.kvm_vcpu_size
        lay = self.layouts.get(name)
        if not base or lay is None:
            return None
        return 100.0 * lay.size / base

    def summary(self) -> dict:
        """The RFC's question: kvm_cpu_context + vcpu_hyp_state against kvm_vcpu."""
        vcpu = self.layouts.get("kvm_vcpu")
        ctxt = self.layouts.get("kvm_cpu_context")
        hyp = self.layouts.get("vcpu_hyp_state")
        d: dict = {"kvm_vcpu": vcpu.size if vcpu else None,
                   "kvm_cpu_context": ctxt.size if ctxt else None,
                   "vcpu_hyp_state": hyp.size if hyp else None,
                   "vcpu_hyp_state_present": hyp is not None}
        if vcpu and not hyp:
            from scopecheck.layout import member

            loose = {}
            for f in RFC_LOOSE_FIELDS:
                try:
                    loose[f] = member(vcpu, f).size or 0
                except KeyError:
                    pass
            d["rfc_loose_fields"] = loose
            d["rfc_loose_bytes"] = sum(loose.values())
        if vcpu and ctxt:
            reduced = ctxt.size + (hyp.size if hyp else d.get("rfc_loose_bytes", 0))
            d["reduced_scope"] = reduced
            d["reduced_pct_of_kvm_vcpu"] = round(100.0 * reduced / vcpu.size, 2)
            d["saved_bytes"] = vcpu.size - reduced
        phv = self.layouts.get("pkvm_hyp_vcpu")
        if phv:
            d["pkvm_hyp_vcpu"] = phv.size
        return d

    def summary_line(self) -> str:
        s = self.summary()
        if s.get("reduced_scope") is None:
            return "reduced scope: kvm_vcpu or kvm_cpu_context not found, nothing to compare"
        if s["vcpu_hyp_state_present"]:
            line = (f"reduced scope: kvm_cpu_context {s['kvm_cpu_context']} B + vcpu_hyp_state "
                    f"{s['vcpu_hyp_state']} B = {s['reduced_scope']} B, "
                    f"{s['reduced_pct_of_kvm_vcpu']:.1f}% of kvm_vcpu ({s['kvm_vcpu']} B)")
        else:
            names = ", ".join(f.split(".", 1)[1] for f in s["rfc_loose_fields"])
            line = (f"reduced scope: kvm_cpu_context {s['kvm_cpu_context']} B + the RFC's hyp fields "
                    f"{s['rfc_loose_bytes']} B = {s['reduced_scope']} B, "
                    f"{s['reduced_pct_of_kvm_vcpu']:.1f}% of kvm_vcpu ({s['kvm_vcpu']} B); "
                    f"struct vcpu_hyp_state is not in this build, its fields are loose in "
                    f"kvm_vcpu_arch ({names})")
        if "pkvm_hyp_vcpu" in s:
            line += f"; pkvm_hyp_vcpu is {s['pkvm_hyp_vcpu']} B (it embeds a whole kvm_vcpu)"
        return line

    def to_dict(self, members: bool = True) -> dict:
        structs = []
        for n, lay in self.layouts.items():
            d = lay.to_dict() if members else {k: v for k, v in lay.to_dict().items() if k != "members"}
            d["pct_of_kvm_vcpu"] = None if self.pct_of_kvm_vcpu(n) is None else round(self.pct_of_kvm_vcpu(n), 2)
            p = (self.pahole or {}).get(n)
            d["pahole"] = p.to_dict() if p else None
            structs.append(d)
        return {
            "target": self.target.arg,
            "elf": str(self.target.elf),
            "build_id": self.build_id,
            "structs": structs,
            "absent": self.absent,
            "summary": self.summary(),
            "pahole_version": self.pahole_version,
            "pahole_note": self.pahole_note,
            "pahole_format": self.pahole_format,
            "mismatches": self.mismatches,
        }


def size_report(target: BuildTarget, structs: list[str] | None = None, *, pahole: bool = True,
                use_cache: bool = True) -> SizeReport:
    """Read the layouts of ``structs`` (default: the KVM set) and compare with pahole."""
    from scopecheck import layout_cache
    from scopecheck.binary.elf import ElfImage

    explicit = structs is not None and len(structs) > 0
    names = list(dict.fromkeys(structs)) if explicit else list(DEFAULT_STRUCTS)
    running = None
    with ElfImage(target.elf) as elf:
        elf.require_dwarf()
        cache = layout_cache.LayoutCache.for_elf(elf) if use_cache and layout_cache.enabled() else None
        need = [n for n in names if cache is None or n not in cache.layouts]
        got = {n: cache.layouts[n] for n in names if cache is not None and n in cache.layouts}
        fmt = "btf" if elf.section(".BTF") is not None else "dwarf"
        if pahole:
            # pahole reads the DWARF on another core while we do: start it before our own read
            running = _start_pahole(target, names, explicit, got, cache, fmt)
        try:
            if need:
                from scopecheck.binary.types import read_layouts

                fresh = read_layouts(elf, need)
                got.update(fresh)
                if cache is not None:
                    cache.layouts.update(fresh)
        except BaseException:
            _cancel(running)
            raise
        build_id = elf.build_id
    layouts = {n: got[n] for n in names if got.get(n) is not None}
    missing = [n for n in names if got.get(n) is None]
    req_missing = [n for n in REQUIRED_STRUCTS if n in missing]
    if (explicit and missing) or (not explicit and req_missing):
        _cancel(running)
        if explicit:
            raise InputError(f"{target.elf}: struct {missing[0]} not found in DWARF")
        raise InputError(f"{target.elf}: struct {req_missing[0]} not found in DWARF; "
                         "is this an arm64 kernel (or kvm_nvhe.o) built with KVM?")
    rep = SizeReport(target=target, build_id=build_id, layouts=layouts, absent=missing)
    if pahole:
        _cross_check(rep, cache, running, fmt)
    if cache is not None and (need or cache.dirty):
        cache.save()
    return rep


def _cancel(running) -> None:
    if isinstance(running, tuple) and running[0] is not None:
        running[0].cancel()


def _start_pahole(target, names, explicit: bool, got: dict, cache, fmt: str = "dwarf"):
    """Start pahole on what the cache does not answer; returns (Running, pahole id, known answers),
    a note string (pahole not installed) or None (nothing to ask).

    ``fmt``: "btf" when the file has a .BTF section (pahole reads it ~3x faster than the DWARF;
    structs the BTF lacks are then asked of the DWARF), else "dwarf"."""
    from scopecheck.binary import pahole as ph

    pid = ph.identity()
    if pid is None:
        return "pahole not installed (Debian package 'dwarves'); sizes not cross-checked"
    pid = f"{pid}|{fmt}"
    entry = cache.pahole_answers(pid) if cache is not None else None
    known = dict(entry["structs"]) if entry else {}
    # ask only for structs the DWARF has (or must have): a name pahole cannot find makes it read
    # all of a vmlinux's DWARF (a minute, GBs); the optional ones follow once our read shows them
    ask = names if explicit else [n for n in names if n in REQUIRED_STRUCTS or got.get(n) is not None]
    ask = [n for n in ask if n not in known]
    if not ask and entry:
        return None, pid, entry["version"], known
    return (ph.Running(target.elf, ask, want_version=entry is None, fmt=fmt), pid, (entry or {}).get("version"),
            known)


def _cross_check(rep: SizeReport, cache, running=None, fmt: str = "dwarf") -> None:
    from scopecheck.binary import pahole as ph

    if running is None:
        running = _start_pahole(rep.target, list(rep.layouts), True, rep.layouts, cache, fmt)
    if isinstance(running, str):
        rep.pahole_note = running
        return
    proc, pid, ver, known = running
    names = list(rep.layouts)
    try:
        if proc is not None:
            v, fresh = proc.result()
            ver = v or ver
            known.update({n: p for n, p in fresh.items()})
        # optional structs our read found (vcpu_hyp_state, pkvm_hyp_vcpu), and any the BTF lacks
        todo = [n for n in names if n not in known or (fmt == "btf" and known[n] is None)]
        if todo:
            fresh = ph.run(rep.target.elf, todo)
            known.update(fresh)
            if ver is None:
                ver = ph.pahole_version()
    except InputError as e:
        rep.pahole_note = f"pahole failed: {e}"
        return
    except ToolMissing as e:
        rep.pahole_note = f"pahole not installed (Debian package '{e.package}'); sizes not cross-checked"
        return
    rep.pahole_version = ver
    rep.pahole_format = fmt.upper()
    if cache is not None:
        cache.set_pahole_answers(pid, ver, known)
    rep.pahole = {n: known.get(n) for n in names}
    for n, lay in rep.layouts.items():
        p = rep.pahole.get(n)
        if p is None:
            rep.mismatches.append(f"pahole does not show struct {n}, which DWARF defines with {lay.size} bytes")
        elif p.size != lay.size:
            rep.mismatches.append(f"struct {n}: pahole says {p.size} bytes, scopecheck read {lay.size} bytes")
