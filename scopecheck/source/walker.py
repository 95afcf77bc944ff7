"""Per-function analysis of a libclang AST: field accesses from root structs, calls, escalations.

Values are tracked as :class:`Ref` (root struct, path from it, name of the struct at the end):

* a parameter or unknown expression of type ``struct R *`` with R a root -> ``Ref(R, "")``;
* ``&e`` -> the object ``e`` designates; ``p->m`` / ``e.m`` / ``e[i]`` extend the path;
* a local pointer whose every definition (initialiser or ``=``, NULL ignored) evaluates to
  the same Ref is an *alias* of it (``struct kvm_vcpu_arch *a = &vcpu->arch`` -> kvm_vcpu:arch);
* a pointer *loaded* from a root-reached field starts a new root named by its pointee struct
  (``vcpu->kvm`` -> root ``kvm``), so anything reachable from a root is followed;
* casts to a pointer to a non-struct type (void *, char *, u64 *, integers) keep the value;
  a cast to ``struct R *`` of a value pointing at a different (smaller) root struct is an
  escalation (``container_of``), and starts root R;
* pointer arithmetic on a value (``(char *)vcpu + offsetof(...)``, ``p + 2`` on a ``u64 *``,
  integer arithmetic on a pointer cast to an integer) and a cast of a member's address to
  another struct type make a *raw* Ref: a byte ``delta`` (plus a variable part of a known
  ``var`` stride) from a known field. Accesses through it are mapped to fields by byte
  range with libclang's layout of the root (:mod:`.raw_access`); what cannot be mapped is
  an :class:`~scopecheck.model_code.Unanalysed` record.

Imported lazily (imports clang).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import clang.cindex as ci

from scopecheck.model_code import AddressTaken, Escalation, FieldAccess, SourceCall, SourceFunction, Unanalysed
from scopecheck.source import clangext as cx
from scopecheck.source import raw_access as ra

K = ci.CursorKind
STMT_EXPR = ci.CursorKind.from_id(121)  # "StmtExpr" in the bindings' own spelling
_IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_IDENTIFIER_CHARS = frozenset(bytes([b]) for b in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
#: words libclang's lexer gives as keywords in the kernel's GNU C (a macro is never one of them)
_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern float for goto if
inline int long register restrict return short signed sizeof static struct switch typedef union unsigned void
volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert
_Thread_local typeof __typeof __typeof__ __alignof __alignof__ __asm __asm__ asm __attribute __attribute__
__extension__ __inline __inline__ __label__ __real __real__ __imag __imag__ __restrict __restrict__ __signed
__signed__ __volatile __volatile__ __const __const__ __auto_type __builtin_offsetof __builtin_va_arg
__builtin_types_compatible_p __builtin_choose_expr __func__ __FUNCTION__ __PRETTY_FUNCTION__ __thread
_Float16 __int128 __bf16 __fp16""".split())


@dataclass(frozen=True, slots=True)
class Ref:
    root: str
    path: str
    obj: str | None  # name of the struct the path designates (None: not a struct)
    # raw: the location is ``delta`` bytes past ``path`` (plus a variable multiple of ``var``
    # bytes when var > 0; var -1: a variable offset of unknown stride); ``obj`` is then the
    # struct type the bytes are viewed as (a cast), or None
    delta: int = 0
    var: int = 0
    raw: bool = False

    def member(self, name: str | None, obj: str | None) -> "Ref":
        if not name:
            return Ref(self.root, self.path, obj)
        return Ref(self.root, f"{self.path}.{name}" if self.path else name, obj)

    def index(self, idx: str, obj: str | None) -> "Ref":
        return Ref(self.root, f"{self.path}{idx}", obj)


class Context:
    """What the walkers of one translation unit share."""

    def __init__(self, tu, roots, relpath):
        self.tu = tu
        self.roots = frozenset(roots)
        self.relpath = relpath  # absolute file name -> reported file name
        self.sizes: dict[str, int] = {}
        self.types: dict[str, object] = {}  # struct name -> its (canonical) libclang type
        self._layouts: dict[str, object] = {}
        self._text: dict[str, bytes] = {}
        self._file_names: dict[int, str] = {}
        self._needles = [n.encode() for n in self.roots] + [b"container_of"]
        self.main_file = os.path.normpath(tu.spelling) if tu is not None else None

    def worth_walking(self, fn) -> bool:
        """Walk a function fully unless it is a generic header function that never names a root.

        Functions of the main file and of files with "kvm" in their path are always walked;
        others only when their text mentions a root struct or container_of. Skipped ones are
        still listed as functions (without their calls): they cannot reach a root's fields
        by themselves, and walking every inline of every kernel header costs seconds per file.
        """
        handle, start, end = cx.extent_offsets(fn)
        if not handle:
            return True
        name = self.file_name(handle)
        if name == self.main_file or "kvm" in name:
            return True
        body = self.text(name)[start:end]
        return not body or any(n in body for n in self._needles)

    def text(self, name: str) -> bytes:
        """A source file's bytes (read once per translation unit; b"" when unreadable)."""
        text = self._text.get(name)
        if text is None:
            try:
                with open(name, "rb") as fh:
                    text = fh.read()
            except OSError:
                text = b""
            self._text[name] = text
        return text

    def file_name(self, handle: int) -> str:
        """The normalised name of a libclang file handle (:func:`clangext.file_position`)."""
        name = self._file_names.get(handle)
        if name is None:
            name = self._file_names[handle] = os.path.normpath(cx.file_name(handle))
        return name

    def names(self, t) -> list[str]:
        return cx.record_names(t)

    def root_of(self, t) -> str | None:
        """The root-struct name of a (non-pointer) type, or None."""
        for n in cx.record_names(t):
            if n in self.roots:
                if n not in self.sizes:
                    sz = t.get_canonical().get_size()
                    if sz > 0:
                        self.sizes[n] = sz
                    self.types[n] = t.get_canonical()
                return n
        return None

    def layout(self, name: str):
        """libclang's layout of struct ``name`` (as seen in this TU), or None."""
        if name not in self._layouts:
            t = self.types.get(name)
            lay = None
            if t is not None:
                from scopecheck.source.clang_layout import layout_of

                lay = layout_of(t, name)
            self._layouts[name] = lay
        return self._layouts[name]

    def obj_of(self, t) -> str | None:
        """A struct type's name (root name preferred), or None for non-struct types."""
        if not cx.is_record(t):
            return None
        r = self.root_of(t)
        if r:
            return r
        names = cx.record_names(t)
        if names:
            self.types.setdefault(names[0], t.get_canonical())
        return names[0] if names else None


def _anonymous(member_cursor) -> bool:
    n = member_cursor.spelling
    return not n or "(" in n or " " in n or ":" in n


def _var(a: int, b: int) -> int:
    """The stride of two variable offsets combined (0 none, -1 unknown)."""
    if a == 0 or a == b:
        return b
    return -1


def _base(lay, path: str) -> int | None:
    if lay is None:
        return None
    from scopecheck.source.clang_layout import base_offset

    return base_offset(lay, path)


def _extent(lay, path: str) -> tuple[int | None, int | None]:
    if "[*]" in path:
        return None, None
    from scopecheck.layout import member

    try:
        m = member(lay, path)
    except (KeyError, ValueError):
        return None, None
    return m.offset, m.size


def _null(c) -> bool:
    s = cx.strip(c)
    while s.kind == K.CSTYLE_CAST_EXPR:
        s = cx.strip(cx.cast_operand(s))
    return s.kind == K.INTEGER_LITERAL and cx.eval_int(s) == 0


def function_record(fn, ctx: Context, where: tuple | None = None) -> SourceFunction:
    """The :class:`SourceFunction` of a function definition cursor (no walk: header functions
    that never name a root get only this). ``where``: (file handle, line, column) of
    ``fn.location`` when the caller has them (:func:`clangext.top_level`)."""
    if where is not None:
        handle, line, col = where
        file = ctx.relpath(ctx.file_name(handle)) if handle else None
    else:
        loc = fn.location  # one location: file, line and column from one libclang call
        f = loc.file
        file, line, col = (ctx.relpath(f.name) if f is not None else None), loc.line, loc.column
    params = tuple((a.spelling, a.type.spelling) for a in fn.get_arguments())
    return SourceFunction(name=fn.spelling, file=file, line=line, col=col,
                          is_static=fn.storage_class == ci.StorageClass.STATIC,
                          is_inline=cx.is_inline(fn), type=cx.function_type_spelling(fn.type),
                          params=params)


class FunctionWalker:
    def __init__(self, fn, ctx: Context):
        self.fn = fn
        self.ctx = ctx
        self.file = ctx.relpath(fn.location.file.name)
        self.line = fn.location.line
        self.key = (fn.spelling, self.file, self.line)
        self._defs: dict[int, list] = {}
        self._body = None
        self.values: dict[int, Ref | None] = {}
        self.callee_refs: set[int] = set()
        self._span: tuple | None = None  # (file, start, end offset) of the function: macro_at
        self.accesses: list[FieldAccess] = []
        self.escalations: list[Escalation] = []
        self.calls: list[SourceCall] = []
        self.address_taken: list[AddressTaken] = []
        self.unanalysed: list[Unanalysed] = []

    # ------------------------------------------------------------ record
    def function(self) -> SourceFunction:
        return function_record(self.fn, self.ctx)

    def run(self):
        body = None
        for c in cx.children(self.fn):
            if c.kind == K.PARM_DECL:
                self._defs.setdefault(c.hash, []).append("param")
            elif c.kind == K.COMPOUND_STMT:
                body = c
        if body is None:
            return self
        self._body = body
        self._visit(body, [])
        return self

    @property
    def defs(self) -> dict[int, list]:
        """Definitions of parameters and locals (collected on first use: most functions never ask)."""
        if self._body is not None:
            body, self._body = self._body, None
            self._collect_defs(body)
        return self._defs

    # ------------------------------------------------------------ definitions of locals
    def _collect_defs(self, c):
        for ch in cx.children(c):
            k = ch.kind
            if k == K.VAR_DECL:
                kids = cx.children(ch)
                if kids and kids[-1].kind.is_expression():
                    self._defs.setdefault(ch.hash, []).append(kids[-1])
                else:
                    self._defs.setdefault(ch.hash, [])
            elif k == K.BINARY_OPERATOR and cx.binary_op(ch) == cx.BO_ASSIGN:
                kids = cx.children(ch)
                if len(kids) == 2:
                    lhs = cx.strip(kids[0])
                    if lhs.kind == K.DECL_REF_EXPR and lhs.referenced is not None:
                        self._defs.setdefault(lhs.referenced.hash, []).append(kids[1])
            elif k in (K.UNARY_OPERATOR, K.COMPOUND_ASSIGNMENT_OPERATOR):
                # p++ / p += n on a pointer: no longer a plain alias
                kids = cx.children(ch)
                if kids:
                    t = cx.strip(kids[0])
                    if t.kind == K.DECL_REF_EXPR and t.referenced is not None and \
                            (k == K.COMPOUND_ASSIGNMENT_OPERATOR or cx.unary_op(ch) in cx.INC_DEC):
                        self._defs.setdefault(t.referenced.hash, []).append("opaque")
            self._collect_defs(ch)

    def var_value(self, decl) -> Ref | None:
        h = decl.hash
        if h in self.values:
            return self.values[h]
        self.values[h] = None  # recursion guard
        fallback = self._fallback_ptr(decl.type)
        defs = self.defs.get(h)
        if defs is None:  # a global, or a local we never saw defined
            val = fallback
        else:
            vals = set()
            unknown = False
            for d in defs:
                if isinstance(d, str) and d == "param":
                    vals.add(fallback)
                elif isinstance(d, str):
                    unknown = True
                elif _null(d):
                    continue
                else:
                    v = self.eval_ptr(d)
                    if v is None:
                        unknown = True
                    else:
                        vals.add(v)
            val = next(iter(vals)) if len(vals) == 1 and not unknown else fallback
            if val is None and len(vals) == 1 and None not in vals:
                val = next(iter(vals))
        self.values[h] = val
        return val

    def _fallback_ptr(self, t) -> Ref | None:
        p = cx.pointee(t)
        if p is None:
            return None
        r = self.ctx.root_of(p)
        return Ref(r, "", r) if r else None

    # ------------------------------------------------------------ evaluation
    def eval_ptr(self, e) -> Ref | None:
        """The object a pointer-valued expression points to."""
        s = cx.strip(e)
        k = s.kind
        if k in (K.MEMBER_REF_EXPR, K.ARRAY_SUBSCRIPT_EXPR) or (k == K.UNARY_OPERATOR
                                                                 and cx.unary_op(s) == cx.UO_DEREF):
            if cx.is_array(s.type):  # array decays to a pointer to its first element
                return self.eval_loc(s)
            if not cx.is_pointer(s.type):
                return None
            loc = self.eval_loc(s)  # a pointer loaded from memory starts a new root
            p = cx.pointee(s.type)
            if p is None:
                return None
            if loc is not None:
                name = self.ctx.obj_of(p)
                return Ref(name, "", name) if name else None
            return self._fallback_ptr(s.type)
        if k == K.DECL_REF_EXPR:
            ref = s.referenced
            if ref is None or ref.kind not in (K.VAR_DECL, K.PARM_DECL):
                return None
            if cx.is_array(ref.type):
                return self.eval_loc(s)
            return self.var_value(ref)
        if k == K.UNARY_OPERATOR:
            op = cx.unary_op(s)
            kids = cx.children(s)
            if op == cx.UO_ADDROF and kids:
                return self.eval_loc(kids[0])
            return None
        if k == K.CSTYLE_CAST_EXPR:
            return self._cast_value(s)[0]
        if k == K.BINARY_OPERATOR:
            op = cx.binary_op(s)
            kids = cx.children(s)
            if op in (cx.BO_ADD, cx.BO_SUB) and len(kids) == 2:
                for i, kid in enumerate(kids):
                    if cx.is_pointer(kid.type) or cx.is_pointer(cx.strip(kid).type):
                        if op == cx.BO_SUB and i == 1:
                            return None  # n - p: not a pointer
                        if op == cx.BO_SUB and (cx.is_pointer(kids[1].type) or cx.is_pointer(cx.strip(kids[1]).type)):
                            return None  # p - q: a distance
                        return self._step(self.eval_ptr(kid), s.type, kids[1 - i], op == cx.BO_SUB)
                return self.eval_ptr(kids[0]) if op == cx.BO_SUB else None
            if op == cx.BO_COMMA and len(kids) == 2:
                return self.eval_ptr(kids[1])
            return None
        if k == STMT_EXPR:
            last = self._stmt_expr_value(s)
            return self.eval_ptr(last) if last is not None else self._fallback_ptr(s.type)
        if k == K.CONDITIONAL_OPERATOR:
            kids = cx.children(s)
            if len(kids) == 3:
                a = None if _null(kids[1]) else self.eval_ptr(kids[1])
                b = None if _null(kids[2]) else self.eval_ptr(kids[2])
                if a == b or b is None and _null(kids[2]):
                    return a
                if a is None and _null(kids[1]):
                    return b
            return self._fallback_ptr(s.type)
        return self._fallback_ptr(s.type)

    def _step(self, v: Ref | None, ptr_type, n_expr, minus: bool) -> Ref | None:
        """``v + n`` for a pointer of type ``ptr_type``: a raw Ref ``n * sizeof(*p)`` bytes further.

        Stepping a struct pointer (``vcpu + 1``) keeps the value as before (arrays of roots).
        """
        if v is None:
            return None
        elem = cx.pointee(ptr_type)
        if elem is None:
            return v
        if cx.is_record(elem) and not v.raw:
            return v
        esz = elem.get_canonical().get_size()
        if esz <= 0:
            esz = 1  # void * arithmetic (GNU C): bytes
        n = cx.eval_int(n_expr)
        if n is None:
            return Ref(v.root, v.path, None, v.delta, _var(v.var, esz), True)
        d = v.delta + (-n if minus else n) * esz
        if d == 0 and not v.raw:
            return v
        return Ref(v.root, v.path, None, d, v.var, True)

    def _stmt_expr_value(self, s):
        kids = cx.children(s)
        if not kids or kids[0].kind != K.COMPOUND_STMT:
            return None
        stmts = cx.children(kids[0])
        if stmts and stmts[-1].kind.is_expression():
            return stmts[-1]
        return None

    def _cast_value(self, s) -> tuple[Ref | None, tuple | None]:
        """(value, escalation (from, to) or None) of a C-style cast."""
        op = cx.cast_operand(s)
        if op is None:
            return None, None
        if not (cx.is_pointer(s.type)):
            # a cast to an integer keeps the value (kern_hyp_va: (unsigned long)v)
            return (self.eval_ptr(op) if cx.is_pointer(op.type) or cx.is_pointer(cx.strip(op).type)
                    else self._int_carried(op)), None
        p = cx.pointee(s.type)
        if cx.is_pointer(op.type) or cx.is_pointer(cx.strip(op).type):
            v = self.eval_ptr(op)
        else:  # an integer: (T *)((unsigned long)vcpu + 8) carries the pointer and the bytes added
            v = self._int_carried(op) if cx.strip(op).kind == K.BINARY_OPERATOR else None
            if v is None:
                v = self.eval_ptr(op)
        if p is None or not cx.is_record(p):
            return v, None  # void *, char *, u64 *: keep the value
        target = self.ctx.obj_of(p)
        if target is None:
            return None, None
        if v is not None and v.raw:
            return self._cast_raw(v, target)
        if v is not None and v.obj == target:
            return v, None
        if target not in self.ctx.roots:
            if v is not None and (v.path or v.obj in self.ctx.roots):
                return Ref(v.root, v.path, target, 0, 0, True), None  # a view of a field's bytes
            return None, None
        esc = None
        if v is not None and v.obj in self.ctx.roots and v.root != target:
            big, small = self.ctx.sizes.get(target), self.ctx.sizes.get(v.obj)
            if big is None or small is None or big > small:
                esc = (v.obj, target)
        return Ref(target, "", target), esc

    def _cast_raw(self, v: Ref, target: str) -> tuple[Ref | None, tuple | None]:
        """A raw location cast to ``struct target *``: back to a named field when the bytes are one."""
        if v.var == 0:
            if not v.path and v.delta == 0 and target == v.root:
                return Ref(v.root, "", v.root), None
            lay = self.ctx.layout(v.root)
            base = _base(lay, v.path)
            if lay is not None and base is not None:
                at = base + v.delta
                if at == 0 and target == v.root:
                    return Ref(v.root, "", v.root), None
                if 0 <= at < lay.size:
                    path = ra.member_at(lay, at, target)
                    if path:
                        return Ref(v.root, path, target), None
        if target in self.ctx.roots and target != v.root:
            # container_of(ptr, struct R, member): walks back out of the smaller root
            src = v.root if not v.path else None
            esc = None
            if src is not None and src in self.ctx.roots:
                big, small = self.ctx.sizes.get(target), self.ctx.sizes.get(src)
                if big is None or small is None or big > small:
                    esc = (src, target)
            return Ref(target, "", target), esc
        if target == v.root and v.var != 0:
            return Ref(target, "", target), None  # an address translation (kern_hyp_va-style)
        return Ref(v.root, v.path, target, v.delta, v.var, True), None

    def _int_carried(self, op) -> Ref | None:
        """A pointer value carried through integer arithmetic ((unsigned long)p + off)."""
        s = cx.strip(op)
        if s.kind == K.CSTYLE_CAST_EXPR:
            return self._cast_value(s)[0]
        if s.kind == K.BINARY_OPERATOR and cx.binary_op(s) in (cx.BO_ADD, cx.BO_SUB):
            kids = cx.children(s)
            v = self._int_carried(kids[0]) if kids else None
            if v is not None and len(kids) == 2:
                n = cx.eval_int(kids[1])
                if n is not None and n != 0:  # (unsigned long)vcpu + 8: bytes
                    d = v.delta + (-n if cx.binary_op(s) == cx.BO_SUB else n)
                    return Ref(v.root, v.path, None, d, v.var, True)
            return v
        if s.kind == K.DECL_REF_EXPR and s.referenced is not None and \
                s.referenced.kind in (K.VAR_DECL, K.PARM_DECL) and not cx.is_pointer(s.referenced.type):
            defs = self.defs.get(s.referenced.hash) or []
            if len(defs) == 1 and not isinstance(defs[0], str):
                return self._int_carried(defs[0])
        return None

    def eval_loc(self, e) -> Ref | None:
        """The object an lvalue expression designates."""
        s = cx.strip(e)
        k = s.kind
        if k == K.MEMBER_REF_EXPR:
            kids = cx.children(s)
            if not kids:
                return None
            base = kids[0]
            b = self.eval_ptr(base) if cx.is_pointer(base.type) else self.eval_loc(base)
            if b is None:
                return None
            if b.raw:
                ref = s.referenced
                bits = ref.get_field_offsetof() if ref is not None and ref.kind == K.FIELD_DECL else -1
                if bits < 0:
                    return Ref(b.root, b.path, None, b.delta, -1, True)
                return Ref(b.root, b.path, self.ctx.obj_of(s.type), b.delta + bits // 8, b.var, True)
            name = None if _anonymous(s) else s.spelling
            return b.member(name, self.ctx.obj_of(s.type))
        if k == K.ARRAY_SUBSCRIPT_EXPR:
            kids = cx.children(s)
            if len(kids) != 2:
                return None
            base, idx = kids
            sb = cx.strip(base)
            if cx.is_array(sb.type):
                b = self.eval_loc(sb)
                if b is None:
                    return None
                if b.raw:
                    return self._raw_index(b, s.type, idx)
                if b.path == "" and sb.kind == K.DECL_REF_EXPR:
                    return b  # an array of root structs: each element is a root
                n = cx.eval_int(idx)
                return b.index(f"[{n}]" if n is not None else "[*]", self.ctx.obj_of(s.type))
            b = self.eval_ptr(base)
            if b is not None and b.raw:
                return self._raw_index(b, s.type, idx)
            return b
        if k == K.UNARY_OPERATOR:
            if cx.unary_op(s) != cx.UO_DEREF:
                return None
            kids = cx.children(s)
            return self.eval_ptr(kids[0]) if kids else None
        if k == K.DECL_REF_EXPR:
            ref = s.referenced
            if ref is None or ref.kind not in (K.VAR_DECL, K.PARM_DECL):
                return None
            t = ref.type
            et = cx.element_type(t)
            r = self.ctx.root_of(et if et is not None else t)
            return Ref(r, "", r) if r else None
        if k == STMT_EXPR:
            last = self._stmt_expr_value(s)
            return self.eval_loc(last) if last is not None else None
        if cx.is_record(s.type):
            r = self.ctx.root_of(s.type)
            return Ref(r, "", r) if r else None
        return None

    def _raw_index(self, b: Ref, elem_type, idx) -> Ref:
        esz = elem_type.get_canonical().get_size()
        n = cx.eval_int(idx)
        obj = self.ctx.obj_of(elem_type)
        if esz <= 0:
            return Ref(b.root, b.path, obj, b.delta, -1, True)
        if n is None:
            return Ref(b.root, b.path, obj, b.delta, _var(b.var, esz), True)
        return Ref(b.root, b.path, obj, b.delta + n * esz, b.var, True)

    # ------------------------------------------------------------ locations, macros
    def macro_at(self, c, own: str | None) -> str | None:
        """The macro whose body produced cursor ``c``'s token, if any: the identifier written
        where the token is spelled in the function's own file (where the macro is expanded),
        unless it is ``own`` (the member's own name) or a keyword.

        Read from the file's text: libclang's tokens of a function cost milliseconds each
        (finding a file's start in the source manager is a scan), the text a lookup."""
        if self._span is None:
            ext = self.fn.extent
            f = ext.start.file
            self._span = (os.path.normpath(f.name), ext.start.offset, ext.end.offset) if f is not None else ()
        if not self._span:
            return None
        handle, off = cx.file_position(c)
        name, start, end = self._span
        if handle is None or not start <= off < end or self.ctx.file_name(handle) != name:
            return None
        text = self.ctx.text(name)
        m = _IDENTIFIER.match(text, off)
        if m is None or (off and text[off - 1:off] in _IDENTIFIER_CHARS):
            return None
        word = m.group().decode()
        return None if word == own or word in _KEYWORDS else word

    def via_of(self, node) -> str | None:
        """First macro (outermost first) that produced part of an access chain."""
        c = node
        for _ in range(64):
            k = c.kind
            if k in cx.PASS_THROUGH:
                kids = cx.children(c)
                if len(kids) != 1:
                    return None
                c = kids[0]
                continue
            if k == K.MEMBER_REF_EXPR:
                m = None if _anonymous(c) else self.macro_at(c, c.spelling)
                if m:
                    return m
                kids = cx.children(c)
            elif k == K.UNARY_OPERATOR:
                m = self.macro_at(c, None)
                if m:
                    return m
                kids = cx.children(c)
            elif k == K.CSTYLE_CAST_EXPR:
                m = self.macro_at(c, None)
                if m:
                    return m
                op = cx.cast_operand(c)
                kids = [op] if op is not None else []
            elif k == K.ARRAY_SUBSCRIPT_EXPR:
                kids = cx.children(c)[:1]
            elif k == STMT_EXPR:
                last = self._stmt_expr_value(c)
                kids = [last] if last is not None else []
            elif k == K.DECL_REF_EXPR:
                ref = c.referenced  # an alias variable (a = &vcpu->arch): name it
                if ref is not None and ref.kind == K.VAR_DECL and cx.is_pointer(ref.type) and \
                        ref.hash in self.defs:
                    v = self.var_value(ref)
                    if v is not None and v.path:
                        return ref.spelling
                return None
            else:
                return None
            if not kids:
                return None
            c = kids[0]
        return None

    def _where(self, c):
        loc = c.location
        f = loc.file
        return (self.ctx.relpath(f.name) if f else self.file), loc.line, loc.column

    # ------------------------------------------------------------ the walk
    def _visit(self, c, stack):
        k = c.kind
        if k in (K.CXX_UNARY_EXPR, K.STATIC_ASSERT, K.TYPE_REF, K.MEMBER_REF):
            return  # sizeof/alignof and friends: unevaluated
        if k in (K.MEMBER_REF_EXPR, K.ARRAY_SUBSCRIPT_EXPR) or \
                (k == K.UNARY_OPERATOR and cx.unary_op(c) in (cx.UO_DEREF, cx.UO_ADDROF)):
            self._access(c, stack)
        elif k == K.CSTYLE_CAST_EXPR:
            v, esc = self._cast_value(c)
            if esc:
                f, line, col = self._where(c)
                m = self.macro_at(c, None)
                self.escalations.append(Escalation(from_root=esc[0], to_root=esc[1], function=self.key,
                                                   file=f, line=line, col=col,
                                                   via="container_of" if m == "container_of" else (m or "cast")))
            op = cx.cast_operand(c)
            if op is not None:
                self._visit(op, stack + [(c, -1)])
            return
        elif k == K.CALL_EXPR:
            self._call(c)
            self._mem_call(c)
        elif k == K.ASM_STMT:
            self._asm_operands(c)
        elif k == K.DECL_REF_EXPR:
            ref = c.referenced
            if ref is not None and ref.kind == K.FUNCTION_DECL and c.hash not in self.callee_refs:
                f, line, col = self._where(c)
                self.address_taken.append(AddressTaken(function=ref.spelling, file=f, line=line,
                                                       type=cx.function_type_spelling(ref.type),
                                                       where=self._store_target(stack),
                                                       in_function=self.key))
            return
        elif k == K.GENERIC_SELECTION_EXPR:
            kids = cx.children(c)
            for i, ch in enumerate(kids[1:], 1):
                self._visit(ch, stack + [(c, i)])
            return
        for i, ch in enumerate(cx.children(c)):
            self._visit(ch, stack + [(c, i)])

    def _up(self, stack, skip=cx.PASS_THROUGH):
        """(ancestor, index of our branch in it) skipping parentheses and implicit casts."""
        for anc, idx in reversed(stack):
            if anc.kind not in skip:
                return anc, idx
        return None, None

    def _access(self, c, stack):
        k = c.kind
        is_addr = k == K.UNARY_OPERATOR and cx.unary_op(c) == cx.UO_ADDROF
        up, idx = self._up(stack)
        if is_addr:
            # &x consumed at once (*&x, (&x)->m, WRITE_ONCE's cast-and-store): the consumer counts
            up2, idx2 = self._up(stack, cx.PASS_THROUGH | {K.CSTYLE_CAST_EXPR})
            if up2 is not None and idx2 == 0 and (
                    up2.kind in (K.MEMBER_REF_EXPR, K.ARRAY_SUBSCRIPT_EXPR) or
                    (up2.kind == K.UNARY_OPERATOR and cx.unary_op(up2) == cx.UO_DEREF)):
                return
            kids = cx.children(c)
            if not kids:
                return
            target = cx.strip(kids[0])
            if target.kind not in (K.MEMBER_REF_EXPR, K.ARRAY_SUBSCRIPT_EXPR) and not (
                    target.kind == K.UNARY_OPERATOR and cx.unary_op(target) == cx.UO_DEREF):
                return  # &local, &global: no field
            ref = self.eval_loc(target)
            kind = "addr"
            node = target
        else:
            if up is not None and idx == 0:
                if up.kind == K.MEMBER_REF_EXPR and not cx.is_pointer(c.type):
                    return  # e.m: the outer member access counts
                if up.kind == K.ARRAY_SUBSCRIPT_EXPR and cx.is_array(c.type):
                    return  # a[i]: the element access counts
                if up.kind == K.UNARY_OPERATOR and cx.unary_op(up) == cx.UO_ADDROF:
                    return  # handled at the &
            if up is not None and up.kind == K.UNARY_OPERATOR and cx.unary_op(up) == cx.UO_ADDROF:
                return
            kind = "read"
            if up is not None and idx == 0:
                if up.kind == K.BINARY_OPERATOR and cx.binary_op(up) == cx.BO_ASSIGN:
                    kind = "write"
                elif up.kind == K.COMPOUND_ASSIGNMENT_OPERATOR:
                    kind = "rw"
                elif up.kind == K.UNARY_OPERATOR and cx.unary_op(up) in cx.INC_DEC:
                    kind = "rw"
            if kind == "read" and cx.is_array(c.type):
                kind = "addr"  # an array used as a pointer: its address, not a load
            ref = self.eval_loc(c)
            node = c
        if ref is None:
            return
        if ref.raw:
            if kind != "addr":
                size = node.type.get_canonical().get_size()
                self._bytes(ref, kind, node, size, self.via_of(c) or ("cast" if ref.obj else "pointer-arith"))
            return
        if not ref.path:
            if kind != "addr" and cx.is_record(node.type) and ref.root == self.ctx.root_of(node.type):
                # a whole root struct copied (*dst = *src): each of its members, at full size
                self._bytes(ref, kind, node, node.type.get_canonical().get_size(), self.via_of(c) or "struct-copy")
            return
        f, line, col = self._where(node)
        self.accesses.append(FieldAccess(root=ref.root, path=ref.path, access=kind, function=self.key,
                                         file=f, line=line, col=col, origin="source",
                                         via=self.via_of(c)))

    # ------------------------------------------------------------ byte ranges
    def _unanalysed(self, kind: str, node, detail: str):
        f, line, col = self._where(node)
        self.unanalysed.append(Unanalysed(kind=kind, function=self.key, file=f, line=line, col=col,
                                          detail=detail, origin="source"))

    def _bytes(self, ref: Ref, kind: str, node, size: int | None, via: str | None):
        """Accesses of ``size`` bytes at a (raw or whole-struct) location, mapped to fields by layout."""
        lay = self.ctx.layout(ref.root)
        what = f"{ref.root}:{ref.path or '<root>'}"
        if lay is None:
            self._unanalysed("unmapped-offset", node, f"{what}{ref.delta:+d}: no layout of struct {ref.root}")
            return
        base = _base(lay, ref.path)
        if base is None:
            self._unanalysed("pointer-arith", node, f"{what}{ref.delta:+d}: variable index before the offset")
            return
        at = base + ref.delta
        if size is None or size <= 0:
            self._unanalysed("unmapped-offset", node, f"{what}{ref.delta:+d}: access of unknown size")
            return
        paths: list[str]
        if ref.var:
            arr = ra_array(lay, at, ref.var) if ref.var > 0 else None
            if arr is None:
                self._unanalysed("pointer-arith", node,
                                 f"{what}{ref.delta:+d} + a variable offset: not an index into an array")
                return
            paths = [arr]
        else:
            try:
                paths = ra.cover(lay, at, size)
            except ValueError:
                self._unanalysed("unmapped-offset", node,
                                 f"{what}{ref.delta:+d}: bytes [{at}, {at + size}) outside struct {ref.root}")
                return
            if not paths:
                self._unanalysed("unmapped-offset", node,
                                 f"{what}{ref.delta:+d}: bytes [{at}, {at + size}) are padding")
                return
        f, line, col = self._where(node)
        for p in paths:
            off, sz = (at, size) if len(paths) == 1 and not ref.var else _extent(lay, p)
            self.accesses.append(FieldAccess(root=ref.root, path=p, access=kind, function=self.key, file=f,
                                             line=line, col=col, origin="source", offset=off, size=sz, via=via))

    def _mem_call(self, c):
        """memcpy/memset/memmove (and __builtin_ variants) of fields: a write of the destination,
        a read of the source, each one access of the whole member (or of the bytes copied)."""
        kids = cx.children(c)
        if not kids:
            return
        callee = cx.strip(kids[0])
        ref = callee.referenced if callee.kind == K.DECL_REF_EXPR else None
        name = ref.spelling if ref is not None else callee.spelling
        spec = ra.MEM_FUNCTIONS.get(name)
        if spec is None:
            return
        args = kids[1:]
        dst_i, src_i, n_i = spec
        if n_i >= len(args):
            return
        n = cx.eval_int(args[n_i])
        for i, kind in ((dst_i, "write"), (src_i, "read")):
            if i is None or i >= len(args):
                continue
            v = self.eval_ptr(args[i])
            if v is None:
                continue
            node = cx.strip(args[i])
            size = n
            if v.raw:
                if size is None:
                    self._unanalysed("memcpy-size", node, f"{name}: {v.root}:{v.path}{v.delta:+d}, size not constant")
                    continue
                self._bytes(v, kind, node, size, name)
                continue
            lay = self.ctx.layout(v.root)
            if not v.path and (lay is None or v.obj != v.root):
                continue  # not a pointer at a root-reached object
            if size is None:
                if v.path:  # the whole member
                    f, line, col = self._where(node)
                    self.accesses.append(FieldAccess(root=v.root, path=v.path, access=kind, function=self.key,
                                                     file=f, line=line, col=col, origin="source", via=name))
                else:
                    self._unanalysed("memcpy-size", node, f"{name}: {v.root}, size not constant")
                continue
            self._bytes(Ref(v.root, v.path, v.obj, 0, 0, True), kind, node, size, name)

    def _asm_operands(self, c):
        """offsetof(struct R, path) of a root R used as an inline-asm operand: an access of that field."""
        kind = None
        for op in cx.children(c):
            parts = ra.offsetof_parts(op)
            if parts is None:
                continue
            struct, path = parts
            if struct not in self.ctx.roots or not path:
                continue
            if kind is None:
                kind = ra.asm_kind(ra.asm_template(c, self.ctx.tu))
            f, line, col = self._where(c)
            self.accesses.append(FieldAccess(root=struct, path=path, access=kind, function=self.key, file=f,
                                             line=line, col=col, origin="source", via="asm"))

    def _call(self, c):
        kids = cx.children(c)
        if not kids:
            return
        callee = cx.strip(kids[0])
        f, line, col = self._where(c)
        if callee.kind == K.DECL_REF_EXPR and callee.referenced is not None and \
                callee.referenced.kind == K.FUNCTION_DECL:
            self.callee_refs.add(callee.hash)
            self.calls.append(SourceCall(caller=self.key, callee=callee.referenced.spelling, file=f,
                                         line=line, col=col, args=self._call_args(kids[1:])))
            return
        t = cx.function_type_spelling(callee.type) or cx.function_type_spelling(kids[0].type)
        if callee.kind == K.UNARY_OPERATOR and cx.unary_op(callee) == cx.UO_DEREF:
            inner = cx.children(callee)
            if inner:
                t = t or cx.function_type_spelling(inner[0].type)
                callee = cx.strip(inner[0])
        self.calls.append(SourceCall(caller=self.key, callee=None, file=f, line=line, col=col, indirect=True,
                                     target_type=t, via=self.describe(callee), args=self._call_args(kids[1:])))

    def _call_args(self, args) -> tuple:
        """Per argument: "root:path" of the root-struct pointer it passes, else "" (for `narrow`)."""
        out = []
        for a in args:
            r = self.eval_ptr(a) if cx.is_pointer(a.type) else None
            out.append(f"{r.root}:{r.path}" if r is not None and r.root else "")
        return tuple(out)

    def describe(self, e, depth=0) -> str | None:
        """A short name for where a function pointer comes from (``host_hcall[]``, ``kvm_vcpu:arch.x``)."""
        s = cx.strip(e)
        k = s.kind
        if k == K.ARRAY_SUBSCRIPT_EXPR:
            kids = cx.children(s)
            base = self.describe(kids[0], depth + 1) if kids else None
            return f"{base}[]" if base else None
        if k == K.MEMBER_REF_EXPR:
            loc = self.eval_loc(s)
            return f"{loc.root}:{loc.path}" if loc else s.spelling
        if k == K.DECL_REF_EXPR:
            ref = s.referenced
            if ref is None:
                return s.spelling
            defs = [d for d in self.defs.get(ref.hash, []) if not isinstance(d, str) and not _null(d)]
            if depth < 4 and ref.kind == K.VAR_DECL and defs:
                names = sorted({n for d in defs if (n := self.describe(d, depth + 1))})
                if names:
                    return ",".join(names)
            return s.spelling
        if k == K.UNARY_OPERATOR and cx.unary_op(s) == cx.UO_DEREF:
            kids = cx.children(s)
            return self.describe(kids[0], depth + 1) if kids else None
        if k == K.CSTYLE_CAST_EXPR:
            op = cx.cast_operand(s)
            return self.describe(op, depth + 1) if op is not None else None
        return None

    def _store_target(self, stack) -> str | None:
        """Where a function's address goes: the table/variable being initialised or assigned."""
        for anc, idx in reversed(stack):
            if anc.kind == K.VAR_DECL:
                return anc.spelling
            if anc.kind == K.BINARY_OPERATOR and cx.binary_op(anc) == cx.BO_ASSIGN and idx == 1:
                kids = cx.children(anc)
                return self.describe(kids[0]) if kids else None
            if anc.kind in (K.CALL_EXPR, K.COMPOUND_STMT):
                return None
        return None


def ra_array(lay, at: int, stride: int) -> str | None:
    """``path[*]`` of the array of ``stride``-byte elements holding byte ``at`` (variable index)."""
    from scopecheck.source.clang_layout import array_path

    hit = array_path(lay, at, stride)
    return hit


def file_scope_address_taken(var, ctx: Context) -> list[AddressTaken]:
    """Functions whose address a file-scope variable's initialiser takes (``host_hcall[]``)."""
    out = []

    def visit(c, depth=0):
        if c.kind == K.DECL_REF_EXPR:
            ref = c.referenced
            if ref is not None and ref.kind == K.FUNCTION_DECL:
                loc = c.location
                out.append(AddressTaken(function=ref.spelling,
                                        file=ctx.relpath(loc.file.name) if loc.file else None,
                                        line=loc.line, type=cx.function_type_spelling(ref.type),
                                        where=var.spelling, in_function=None))
            return
        if c.kind in (K.CXX_UNARY_EXPR, K.TYPE_REF):
            return
        for ch in cx.children(c):
            visit(ch, depth + 1)

    visit(var)
    return out


def relpath_fn(root: str | None):
    cache: dict[str, str] = {}

    def rel(name: str) -> str:
        r = cache.get(name)
        if r is None:
            p = os.path.normpath(name)
            if root and (p == root or p.startswith(root.rstrip(os.sep) + os.sep)):
                r = os.path.relpath(p, root)
            else:
                r = p
            cache[name] = r
        return r

    return rel
