"""Plain records shared by every part of scopecheck.

The binary door (``scopecheck.binary``) and the source door (``scopecheck.source``)
both produce these; nothing here imports either of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator


@dataclass(slots=True)
class Member:
    """One member of a struct or union, with its offset from the *root* struct.

    ``path`` is relative to the root (``arch.ctxt.regs.pc``). Members of an
    array-of-struct element are a template: their path holds ``[]`` for the
    index (``arch.foo[].bar``) and their offset is that of element 0.
    """

    name: str | None
    path: str
    offset: int
    size: int | None
    type_name: str
    kind: str  # struct, union, array, pointer, base, enum, func, void, unknown
    bit_offset: int | None = None  # bit within the storage unit at ``offset`` (pahole style)
    bit_size: int | None = None
    array_dims: tuple[int | None, ...] = ()
    element_size: int | None = None
    members: list["Member"] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.offset + (self.size or 0)

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "path": self.path,
            "offset": self.offset,
            "size": self.size,
            "type": self.type_name,
            "kind": self.kind,
        }
        if self.bit_size is not None:
            d["bit_offset"] = self.bit_offset
            d["bit_size"] = self.bit_size
        if self.array_dims:
            d["array_dims"] = list(self.array_dims)
            d["element_size"] = self.element_size
        if self.members:
            d["members"] = [m.to_dict() for m in self.members]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Member":
        return cls(
            name=d["name"],
            path=d["path"],
            offset=d["offset"],
            size=d["size"],
            type_name=d["type"],
            kind=d["kind"],
            bit_offset=d.get("bit_offset"),
            bit_size=d.get("bit_size"),
            array_dims=tuple(d.get("array_dims", ())),
            element_size=d.get("element_size"),
            members=[cls.from_dict(m) for m in d.get("members", ())],
        )


@dataclass(slots=True)
class StructStats:
    """pahole-style statistics of one struct (its direct members only)."""

    nr_members: int
    holes: int
    sum_holes: int
    padding: int
    bit_holes: int = 0
    cachelines: int = 0

    def to_dict(self) -> dict:
        return {
            "nr_members": self.nr_members,
            "holes": self.holes,
            "sum_holes": self.sum_holes,
            "padding": self.padding,
            "bit_holes": self.bit_holes,
            "cachelines": self.cachelines,
        }


@dataclass(slots=True)
class StructLayout:
    """A struct (or union) type as DWARF describes it."""

    name: str
    kind: str  # struct or union
    size: int
    members: list[Member]
    stats: StructStats
    decl_file: str | None = None
    decl_line: int | None = None

    def walk(self) -> Iterator[Member]:
        """Every member, depth first, parents before children."""
        stack = list(reversed(self.members))
        while stack:
            m = stack.pop()
            yield m
            stack.extend(reversed(m.members))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "decl_file": self.decl_file,
            "decl_line": self.decl_line,
            **self.stats.to_dict(),
            "members": [m.to_dict() for m in self.members],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StructLayout":
        return cls(
            name=d["name"],
            kind=d["kind"],
            size=d["size"],
            members=[Member.from_dict(m) for m in d["members"]],
            stats=StructStats(
                nr_members=d["nr_members"],
                holes=d["holes"],
                sum_holes=d["sum_holes"],
                padding=d["padding"],
                bit_holes=d.get("bit_holes", 0),
                cachelines=d.get("cachelines", 0),
            ),
            decl_file=d.get("decl_file"),
            decl_line=d.get("decl_line"),
        )


@dataclass(slots=True)
class PaholeStruct:
    """What pahole says about one struct, parsed from its text output."""

    name: str
    size: int
    nr_members: int | None = None
    holes: int = 0
    sum_holes: int = 0
    padding: int = 0
    cachelines: int | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": self.size,
            "nr_members": self.nr_members,
            "holes": self.holes,
            "sum_holes": self.sum_holes,
            "padding": self.padding,
            "cachelines": self.cachelines,
        }
