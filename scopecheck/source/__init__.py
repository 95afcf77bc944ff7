"""The source door: facts about hyp code from C sources (libclang) and hyp assembly.

Nothing here imports :mod:`scopecheck.binary`; libclang is imported only when a
translation unit is parsed, so importing this package is cheap.

* :func:`load` / :func:`clang_args` - compile_commands.json (:mod:`.compdb`);
* :func:`source_facts` - field accesses, escalations, calls, address-taken functions
  of C translation units, cached per translation unit (:mod:`.clang_facts`);
* :func:`parse_asm_offsets` / :func:`asm_accesses` - asm-offsets constants in ``.S``
  files read as text (:mod:`.asm_offsets`, the fallback);
* :func:`scopecheck.source.asm_pp.asm_facts` - hyp ``.S`` files through the real
  preprocessor, assembler macros expanded, registers followed (:mod:`.asm_pp`);
* byte-range accesses (pointer arithmetic, casts, copies, memcpy/memset, offsetof in
  inline asm) mapped with libclang's own layouts (:mod:`.raw_access`, :mod:`.clang_layout`).
"""

from scopecheck.source.asm_offsets import asm_accesses, parse_asm_offsets
from scopecheck.source.clang_facts import DEFAULT_ROOTS, STATS, enum_constants, source_facts
from scopecheck.source.compdb import CompileCommand, clang_args, load

__all__ = ["CompileCommand", "DEFAULT_ROOTS", "STATS", "asm_accesses", "clang_args", "enum_constants", "load",
           "parse_asm_offsets", "source_facts"]
