"""Small libclang extras the Python bindings lack (operator kinds, constant evaluation, file locations).

Imported lazily by the source door; importing this module imports ``clang.cindex``.
"""

from __future__ import annotations

import ctypes
import functools

import clang.cindex as ci

K = ci.CursorKind

# CXUnaryOperatorKind
UO_POSTINC, UO_POSTDEC, UO_PREINC, UO_PREDEC, UO_ADDROF, UO_DEREF = 1, 2, 3, 4, 5, 6
INC_DEC = {UO_POSTINC, UO_POSTDEC, UO_PREINC, UO_PREDEC}
# CXBinaryOperatorKind
BO_ADD, BO_SUB, BO_ASSIGN, BO_COMMA = 6, 7, 22, 33

PASS_THROUGH = {K.PAREN_EXPR, K.UNEXPOSED_EXPR}


@functools.cache
def _lib():
    lib = ci.conf.lib
    lib.clang_getCursorUnaryOperatorKind.argtypes = [ci.Cursor]
    lib.clang_getCursorUnaryOperatorKind.restype = ctypes.c_int
    lib.clang_getCursorBinaryOperatorKind.argtypes = [ci.Cursor]
    lib.clang_getCursorBinaryOperatorKind.restype = ctypes.c_int
    lib.clang_Cursor_Evaluate.argtypes = [ci.Cursor]
    lib.clang_Cursor_Evaluate.restype = ctypes.c_void_p
    lib.clang_EvalResult_getKind.argtypes = [ctypes.c_void_p]
    lib.clang_EvalResult_getKind.restype = ctypes.c_int
    lib.clang_EvalResult_getAsLongLong.argtypes = [ctypes.c_void_p]
    lib.clang_EvalResult_getAsLongLong.restype = ctypes.c_longlong
    lib.clang_EvalResult_dispose.argtypes = [ctypes.c_void_p]
    lib.clang_EvalResult_dispose.restype = None
    lib.clang_Cursor_isFunctionInlined.argtypes = [ci.Cursor]
    lib.clang_Cursor_isFunctionInlined.restype = ctypes.c_uint
    # file locations with the file as a plain pointer; outputs not asked for are NULL
    for name in ("clang_getExpansionLocation", "clang_getFileLocation"):
        f = getattr(lib, name)
        f.argtypes = [ci.SourceLocation, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint),
                      ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint)]
        f.restype = None
    return lib


def is_inline(c) -> bool:
    return bool(_lib().clang_Cursor_isFunctionInlined(c))


def unary_op(c) -> int:
    return _lib().clang_getCursorUnaryOperatorKind(c)


def binary_op(c) -> int:
    return _lib().clang_getCursorBinaryOperatorKind(c)


def eval_int(c) -> int | None:
    """The integer value of a constant expression cursor, else None."""
    lib = _lib()
    r = lib.clang_Cursor_Evaluate(c)
    if not r:
        return None
    try:
        if lib.clang_EvalResult_getKind(r) != 1:  # CXEval_Int
            return None
        return int(lib.clang_EvalResult_getAsLongLong(r))
    finally:
        lib.clang_EvalResult_dispose(r)


def file_position(c) -> tuple[int | None, int]:
    """(file handle as an int, byte offset) where the cursor's token is spelled in a file, macro
    arguments included (:func:`file_name` names the handle).

    For a token from a macro *body* this is where the macro is expanded; for a macro
    *argument*, where the argument is written.
    """
    f = ctypes.c_void_p()
    off = ctypes.c_uint()
    _lib().clang_getFileLocation(c.location, ctypes.byref(f), None, None, ctypes.byref(off))
    return f.value, off.value


def file_name(handle: int) -> str:
    """The name of a file handle from :func:`top_level`."""
    return ci.File(ctypes.cast(ctypes.c_void_p(handle), ci.c_object_p)).name


def strip(c):
    """Look through parentheses and implicit casts (libclang's UNEXPOSED_EXPR with one child)."""
    while c.kind in PASS_THROUGH:
        kids = children(c)
        if len(kids) != 1:
            return c
        c = kids[0]
    return c


_VISIT = None
_CHILDREN = None


def _append_child(child, _parent, data):
    out, tu = data
    child._tu = tu
    out.append(child)
    return 1  # CXChildVisit_Continue


def children(c) -> list:
    """The children of a cursor (like ``get_children`` without its per-child null-cursor check,
    through one callback made once rather than one per call: the walkers ask tens of thousands
    of times per translation unit)."""
    global _VISIT, _CHILDREN
    if _CHILDREN is None:
        _VISIT = ci.callbacks["cursor_visit"]
        _CHILDREN = _VISIT(_append_child)
    out: list = []
    ci.conf.lib.clang_visitChildren(c, _CHILDREN, (out, c._tu))
    return out


FUNCTION_DEFINITION, VARIABLE = 1, 2


def extent_offsets(c) -> tuple[int | None, int, int]:
    """(file handle of the extent's start, start offset, end offset), expansion locations, read
    into reused buffers (``c.extent.start.offset`` asks libclang for file, line and column
    again for each of them)."""
    lib = _lib()  # the bindings declare clang_getCursorExtent and clang_getRange{Start,End} themselves
    expansion = lib.clang_getExpansionLocation
    ext = lib.clang_getCursorExtent(c)
    handle, offset = ctypes.c_void_p(), ctypes.c_uint()
    expansion(lib.clang_getRangeStart(ext), ctypes.byref(handle), None, None, ctypes.byref(offset))
    start = offset.value
    expansion(lib.clang_getRangeEnd(ext), None, None, None, ctypes.byref(offset))
    return handle.value, start, offset.value


def top_level(tu) -> list:
    """(kind, cursor, file handle, offset, line, column) of a translation unit's function
    definitions and variables, in order. The handle (an int, :func:`file_name` names it; None
    for no file), offset, line and column are where the name is expanded (``cursor.location``'s
    file, line and column): the offset is a cheap per-translation-unit key.

    The top level of a kernel TU holds tens of thousands of declarations; kinds are read from
    the cursor structure itself (no libclang call) and locations into reused buffers, so only
    the few kept become Python cursors with a kind.
    """
    global _VISIT
    if _VISIT is None:
        _VISIT = ci.callbacks["cursor_visit"]
    lib = ci.conf.lib
    is_definition, location_of = lib.clang_isCursorDefinition, lib.clang_getCursorLocation
    expansion = _lib().clang_getExpansionLocation
    fn, var = K.FUNCTION_DECL.value, K.VAR_DECL.value
    handle, line, col, offset = ctypes.c_void_p(), ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
    p_handle, p_line, p_col, p_offset = ctypes.byref(handle), ctypes.byref(line), ctypes.byref(col), ctypes.byref(offset)
    out = []

    def visitor(child, _parent, _data):
        k = child._kind_id  # what clang_getCursorKind returns, without the call
        if k == fn:
            if is_definition(child):
                child._tu = tu
                expansion(location_of(child), p_handle, p_line, p_col, p_offset)
                out.append((FUNCTION_DEFINITION, child, handle.value, offset.value, line.value, col.value))
        elif k == var:
            child._tu = tu
            expansion(location_of(child), p_handle, p_line, p_col, p_offset)
            out.append((VARIABLE, child, handle.value, offset.value, line.value, col.value))
        return 1  # CXChildVisit_Continue

    lib.clang_visitChildren(tu.cursor, _VISIT(visitor), None)
    return out


def top_level_of(tu, kinds) -> list:
    """(kind id, cursor) of a translation unit's top-level declarations of the given
    :class:`CursorKind` s, in order (kinds compared as libclang's integers, like :func:`top_level`)."""
    global _VISIT
    if _VISIT is None:
        _VISIT = ci.callbacks["cursor_visit"]
    wanted = frozenset(k.value for k in kinds)
    out = []

    def visitor(child, _parent, _data):
        k = child._kind_id
        if k in wanted:
            child._tu = tu
            out.append((k, child))
        return 1  # CXChildVisit_Continue

    ci.conf.lib.clang_visitChildren(tu.cursor, _VISIT(visitor), None)
    return out


def cast_operand(c):
    """The operand of a C-style cast (its last child; earlier ones are the type and typeof())."""
    kids = children(c)
    return kids[-1] if kids else None


def unqualified(t):
    """Canonical type (qualifiers are dropped by comparing declarations/kinds, not spellings)."""
    return t.get_canonical()


def record_names(t) -> list[str]:
    """Names by which a (non-pointer) type is known: typedef names along the sugar chain, then the tag."""
    names = []
    seen = 0
    while seen < 16:
        seen += 1
        k = t.kind
        if k == ci.TypeKind.ELABORATED:
            t = t.get_named_type()
            continue
        if k == ci.TypeKind.TYPEDEF:
            names.append(t.get_declaration().spelling)
            t = t.get_declaration().underlying_typedef_type
            continue
        break
    can = t.get_canonical()
    if can.kind == ci.TypeKind.RECORD:
        decl = can.get_declaration()
        if decl.spelling and not decl.is_anonymous() and "(" not in decl.spelling:
            names.append(decl.spelling)
    return names


def is_record(t) -> bool:
    return t.get_canonical().kind == ci.TypeKind.RECORD


def is_pointer(t) -> bool:
    return t.get_canonical().kind == ci.TypeKind.POINTER


def is_array(t) -> bool:
    return t.get_canonical().kind in (ci.TypeKind.CONSTANTARRAY, ci.TypeKind.INCOMPLETEARRAY,
                                      ci.TypeKind.VARIABLEARRAY, ci.TypeKind.DEPENDENTSIZEDARRAY)


def pointee(t):
    """The pointee type (keeping typedef sugar where libclang has it), or None."""
    if t.kind == ci.TypeKind.POINTER:
        return t.get_pointee()
    if t.kind in (ci.TypeKind.ELABORATED, ci.TypeKind.TYPEDEF):
        can = t.get_canonical()
        if can.kind == ci.TypeKind.POINTER:
            # walk the sugar: typedef T *tp; -> declaration's underlying type
            for _ in range(16):
                if t.kind == ci.TypeKind.ELABORATED:
                    t = t.get_named_type()
                elif t.kind == ci.TypeKind.TYPEDEF:
                    t = t.get_declaration().underlying_typedef_type
                else:
                    break
            if t.kind == ci.TypeKind.POINTER:
                return t.get_pointee()
            return can.get_pointee()
    return None


def element_type(t):
    can = t.get_canonical()
    return can.element_type if is_array(can) else None


def function_type_spelling(t) -> str | None:
    """Canonical spelling of a function type, or of the function a pointer type points to."""
    can = t.get_canonical()
    if can.kind == ci.TypeKind.POINTER:
        can = can.get_pointee().get_canonical()
    if can.kind in (ci.TypeKind.FUNCTIONPROTO, ci.TypeKind.FUNCTIONNOPROTO):
        return can.spelling
    return None
