"""Where a pointer came from: hyp-owned memory or a host address (the host/hyp trust boundary).

Every field access the source door records is made through some pointer. This module says
whose memory that pointer designates:

* **host**: an address the host handed to hyp. A host register (``DECLARE_REG(struct kvm_vcpu *,
  host_vcpu, host_ctxt, 1)``, ``cpu_reg(host_ctxt, n)``: a general-purpose register of the host's
  saved context), a pointer loaded from a field that holds a host address
  (``pkvm_hyp_vcpu.host_vcpu``, ``pkvm_hyp_vm.host_kvm``, or any hyp field a host address was
  stored into), any pointer loaded from host memory (the host controls it), and
  ``kern_hyp_va()`` of any of these;
* **hyp**: hyp's own memory. A ``struct pkvm_hyp_vcpu`` / ``pkvm_hyp_vm`` (only hyp has them),
  the ``vcpu`` embedded in one, hyp's globals and stack, pointers loaded from hyp memory unless
  a host address was stored in that field;
* **None**: not known (a parameter whose callers disagree, a call's return value, a handler
  reached only through a table).

It works in two steps. :class:`ProvenanceWalker` (the source door's function walker with a
symbolic evaluator added) gives each access a *symbolic* provenance: concrete (``"host"``,
``"hyp"``), "parameter i of this function", "a pointer loaded from field S.f of memory X", or
a meet of these; and it records each direct call's pointer arguments and each pointer stored
into a field. These per-function :class:`ProvSummary` records are cached with the rest of a
translation unit's facts. :func:`resolve` then solves the whole program: a parameter's
provenance is the meet over all its call sites (a function whose address is taken also gets
"unknown"), a hyp field's is the meet of what is stored into it, iterated to a fixpoint, and
every :class:`~scopecheck.model_code.FieldAccess` gets its ``provenance``.

Imported lazily (imports clang) except :func:`resolve`, which is plain Python.
"""

from __future__ import annotations

from scopecheck.provenance import (  # noqa: F401  (re-exported: the shared vocabulary)
    HOST_CTXT,
    HOST_FIELDS,
    HYP_TYPES,
    MAX_ROUNDS,
    PASS_CALLS,
    TOP,
    ProvSummary,
    concrete,
    meet,
    resolve,
)


# ---------------------------------------------------------------- the walker (libclang)

def walker_class():
    """The source door's FunctionWalker with provenance (defined lazily: imports clang)."""
    global _Walker
    if _Walker is None:
        _Walker = _make_walker()
    return _Walker


_Walker = None


def _make_walker():
    from scopecheck.source import clangext as cx
    from scopecheck.source.walker import STMT_EXPR, FunctionWalker, K, _null

    BO_OTHER_INT = {cx.BO_ADD, cx.BO_SUB, 8, 9, 17, 18, 19}  # +, -, shl, shr, &, ^, |

    def record_name(t) -> str | None:
        names = cx.record_names(t) if t is not None else []
        return names[-1] if names else None

    def field_key(member) -> str | None:
        ref = member.referenced
        if ref is None:
            return None
        parent = ref.semantic_parent
        name = None
        if parent is not None:
            name = record_name(parent.type)
            if not name and parent.spelling and "(" not in parent.spelling:
                name = parent.spelling
        return f"{name or '?'}.{ref.spelling}"

    class ProvenanceWalker(FunctionWalker):
        """Records, besides the door's facts, a :class:`ProvSummary` for the function."""

        def __init__(self, fn, ctx):
            FunctionWalker.__init__(self, fn, ctx)
            self._psyms: dict[int, object] = {}
            self._params: dict[int, int] = {}
            self.prov = ProvSummary(function=self.key)

        def run(self):
            for c in cx.children(self.fn):
                if c.kind == K.PARM_DECL:
                    self._params[c.hash] = len(self._params)
            self.prov.nparams = len(self._params)
            FunctionWalker.run(self)
            # accesses appended by any path other than _access (none today) stay unknown
            while len(self.prov.accesses) < len(self.accesses):
                self.prov.accesses.append(None)
            return self

        # -------------------------------------------------- hooks
        def _access(self, c, stack):
            n = len(self.accesses)
            FunctionWalker._access(self, c, stack)
            if len(self.accesses) > n:
                self.annotate(c, n)

        def annotate(self, node, first: int) -> None:
            """Give the accesses recorded from index ``first`` on the provenance of ``node``'s memory."""
            s = cx.strip(node)
            if s.kind == K.UNARY_OPERATOR and cx.unary_op(s) == cx.UO_ADDROF:
                kids = cx.children(s)
                s = cx.strip(kids[0]) if kids else s
            try:
                sym = self.loc_sym(s)
            except RecursionError:
                sym = None
            sym = None if sym == TOP else sym
            while len(self.prov.accesses) < first:
                self.prov.accesses.append(None)
            for a in self.accesses[first:]:
                a.provenance = concrete(sym)
                self.prov.accesses.append(sym)

        def _visit(self, c, stack):
            k = c.kind
            try:
                if k == K.CALL_EXPR:
                    self._note_call(c)
                elif k == K.BINARY_OPERATOR and cx.binary_op(c) == cx.BO_ASSIGN:
                    self._note_store(c)
            except RecursionError:
                pass
            FunctionWalker._visit(self, c, stack)

        def _note_call(self, c):
            kids = cx.children(c)
            if not kids:
                return
            callee = cx.strip(kids[0])
            if callee.kind != K.DECL_REF_EXPR or callee.referenced is None or \
                    callee.referenced.kind != K.FUNCTION_DECL:
                return
            args = []
            for a in kids[1:]:
                v = self.ptr_sym(a) if (cx.is_pointer(a.type) or cx.is_pointer(cx.strip(a).type)) else None
                args.append(None if v == TOP else v)
            self.prov.calls.append([callee.referenced.spelling, args])

        def _note_store(self, c):
            kids = cx.children(c)
            if len(kids) != 2:
                return
            lhs = cx.strip(kids[0])
            if lhs.kind != K.MEMBER_REF_EXPR:
                return
            t = lhs.type
            if _null(kids[1]):
                return
            if cx.is_pointer(t):
                val = self.ptr_sym(kids[1])
            elif t.get_canonical().kind.name in ("ULONG", "LONG", "ULONGLONG", "LONGLONG"):
                val = self.int_sym(kids[1])
            else:
                return
            val = None if val == TOP else val
            key = field_key(lhs)
            if key:
                kk = cx.children(lhs)
                mem = self._base_sym(lhs, kk[0]) if kk else None
                self.prov.stores.append([key, None if mem == TOP else mem, val])

        # -------------------------------------------------- evaluation
        def _base_sym(self, member, base):
            return self.ptr_sym(base) if cx.is_pointer(base.type) else self.loc_sym(base)

        def loc_sym(self, e):
            """Whose memory an lvalue designates."""
            s = cx.strip(e)
            k = s.kind
            if k == K.MEMBER_REF_EXPR:
                kids = cx.children(s)
                return self._base_sym(s, kids[0]) if kids else None
            if k == K.ARRAY_SUBSCRIPT_EXPR:
                kids = cx.children(s)
                if not kids:
                    return None
                base = cx.strip(kids[0])
                return self.loc_sym(base) if cx.is_array(base.type) else self.ptr_sym(kids[0])
            if k == K.UNARY_OPERATOR and cx.unary_op(s) == cx.UO_DEREF:
                kids = cx.children(s)
                return self.ptr_sym(kids[0]) if kids else None
            if k == K.DECL_REF_EXPR:
                ref = s.referenced
                if ref is not None and ref.kind in (K.VAR_DECL, K.PARM_DECL):
                    return "hyp"  # a local, a parameter passed by value, a global: hyp's memory
                return None
            if k == STMT_EXPR:
                last = self._stmt_expr_value(s)
                return self.loc_sym(last) if last is not None else None
            if k == K.CSTYLE_CAST_EXPR:
                op = cx.cast_operand(s)
                return self.loc_sym(op) if op is not None else None
            return None

        def _hyp_typed(self, t) -> bool:
            p = cx.pointee(t)
            return p is not None and any(n in HYP_TYPES for n in cx.record_names(p))

        def ptr_sym(self, e):
            """Whose memory a pointer-valued expression points into."""
            s = cx.strip(e)
            if self._hyp_typed(s.type) or self._hyp_typed(e.type):
                return "hyp"
            k = s.kind
            if k in (K.MEMBER_REF_EXPR, K.ARRAY_SUBSCRIPT_EXPR) or (
                    k == K.UNARY_OPERATOR and cx.unary_op(s) == cx.UO_DEREF):
                if cx.is_array(s.type):
                    return self.loc_sym(s)
                return self._load(s)
            if k == K.DECL_REF_EXPR:
                ref = s.referenced
                if ref is None or ref.kind not in (K.VAR_DECL, K.PARM_DECL):
                    return None
                if cx.is_array(ref.type):
                    return "hyp"
                return self.var_sym(ref)
            if k == K.UNARY_OPERATOR:
                if cx.unary_op(s) == cx.UO_ADDROF:
                    kids = cx.children(s)
                    return self.loc_sym(kids[0]) if kids else None
                return None
            if k == K.CSTYLE_CAST_EXPR:
                op = cx.cast_operand(s)
                if op is None:
                    return None
                return self.ptr_sym(op) if cx.is_pointer(cx.strip(op).type) or cx.is_pointer(op.type) \
                    else self.int_sym(op)
            if k == K.BINARY_OPERATOR:
                op = cx.binary_op(s)
                kids = cx.children(s)
                if op in (cx.BO_ADD, cx.BO_SUB) and len(kids) == 2:
                    for kid in kids:
                        if cx.is_pointer(kid.type) or cx.is_pointer(cx.strip(kid).type):
                            return self.ptr_sym(kid)
                    return None
                if op == cx.BO_COMMA and len(kids) == 2:
                    return self.ptr_sym(kids[1])
                if op == cx.BO_ASSIGN and len(kids) == 2:
                    return self.ptr_sym(kids[1])
                return None
            if k == STMT_EXPR:
                last = self._stmt_expr_value(s)
                return self.ptr_sym(last) if last is not None else None
            if k == K.CONDITIONAL_OPERATOR:
                kids = cx.children(s)
                if len(kids) == 3:
                    return meet([self.ptr_sym(x) for x in kids[1:] if not _null(x)])
                return None
            if k == K.CALL_EXPR:
                return self._pass_call(s, self.ptr_sym)
            return None

        def _pass_call(self, s, how):
            kids = cx.children(s)
            callee = cx.strip(kids[0]) if kids else None
            if callee is not None and callee.spelling in PASS_CALLS and len(kids) >= 2:
                a = kids[1]
                return self.ptr_sym(a) if cx.is_pointer(cx.strip(a).type) else self.int_sym(a)
            return None

        def _load(self, s):
            """A value loaded from memory: host memory gives host values; else by the field."""
            if s.kind == K.ARRAY_SUBSCRIPT_EXPR and self._host_gpr(s):
                return "host"
            key = field_key(s) if s.kind == K.MEMBER_REF_EXPR else None
            if key in HOST_FIELDS:
                return "host"
            mem = self.loc_sym(s)
            if mem in ("host", None, TOP):
                return None if mem == TOP else mem
            return ["ld", mem, key]

        def _host_gpr(self, s) -> bool:
            """``host_ctxt->regs.regs[n]``: a register the host passed in."""
            kids = cx.children(s)
            if not kids:
                return False
            regs = cx.strip(kids[0])
            if regs.kind != K.MEMBER_REF_EXPR or regs.spelling != "regs":
                return False
            c = regs
            for _ in range(8):
                kk = cx.children(c)
                if not kk:
                    return False
                c = cx.strip(kk[0])
                while c.kind == K.CSTYLE_CAST_EXPR:
                    op = cx.cast_operand(c)
                    if op is None:
                        return False
                    c = cx.strip(op)
                if c.kind in (K.DECL_REF_EXPR, K.MEMBER_REF_EXPR) and HOST_CTXT in (c.spelling or ""):
                    return True
                if c.kind not in (K.MEMBER_REF_EXPR,):
                    return False
            return False

        def int_sym(self, e):
            """Whose address an integer carries (an address passed through a register or u64)."""
            s = cx.strip(e)
            k = s.kind
            if k == K.CSTYLE_CAST_EXPR:
                op = cx.cast_operand(s)
                if op is None:
                    return None
                return self.ptr_sym(op) if cx.is_pointer(cx.strip(op).type) else self.int_sym(op)
            if k in (K.MEMBER_REF_EXPR, K.ARRAY_SUBSCRIPT_EXPR) or (
                    k == K.UNARY_OPERATOR and cx.unary_op(s) == cx.UO_DEREF):
                return self._load(s)
            if k == K.DECL_REF_EXPR:
                ref = s.referenced
                if ref is None or ref.kind not in (K.VAR_DECL, K.PARM_DECL):
                    return None
                return self.var_sym(ref)
            if k == K.BINARY_OPERATOR and cx.binary_op(s) in BO_OTHER_INT:
                for kid in cx.children(s):
                    v = self.int_sym(kid)
                    if v not in (None, TOP):
                        return v
                return None
            if k == K.CALL_EXPR:
                return self._pass_call(s, self.int_sym)
            if k == STMT_EXPR:
                last = self._stmt_expr_value(s)
                return self.int_sym(last) if last is not None else None
            return None

        def var_sym(self, decl):
            h = decl.hash
            if h in self._psyms:
                return self._psyms[h]
            self._psyms[h] = TOP  # recursion guard (x = kern_hyp_va(x))
            if h in self._params:
                val = ["p", self._params[h]]
                pt = cx.pointee(decl.type)
                if HOST_CTXT in (decl.spelling or "") and pt is not None and \
                        "kvm_cpu_context" in cx.record_names(pt):
                    val = "hyp"  # the host's saved context: hyp's per-cpu kvm_host_data, hyp memory
            else:
                defs = self.defs.get(h)
                if defs is None:
                    val = "hyp"  # a global: hyp's own data
                else:
                    vals = []
                    for d in defs:
                        if isinstance(d, str):
                            vals.append(None)
                        elif _null(d):
                            continue
                        elif cx.is_pointer(decl.type):
                            vals.append(self.ptr_sym(d))
                        else:
                            vals.append(self.int_sym(d))
                    val = meet(vals)
            self._psyms[h] = val
            return val

    return ProvenanceWalker
