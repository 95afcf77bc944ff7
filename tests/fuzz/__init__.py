"""Fuzz and property suite for scopecheck's input readers (see docs/robustness.md).

* :mod:`fuzz.elfmut`   seeded mutations of ELF/DWARF bytes (truncation, bit flips by region,
  header fields, section headers, missing sections, unit headers, type-reference rewiring).
* :mod:`fuzz.harness`  one case in-process: a per-case time bound (SIGALRM), outcomes mapped
  the way the CLI maps them (ScopecheckError -> exit 2, anything else -> a crash), peak RSS.
* :mod:`fuzz.corpus`   the seed inputs: the mini-hyp fixture objects, linked copies of them,
  and the pkvm-tiny 6.1 ``kvm_nvhe.o`` when the build cache has it.
* :mod:`fuzz.runner`   the plan of lanes and seeds, run on a process pool; also a command line
  (``python tests/fuzz/runner.py --cases N`` / ``--replay LANE SEED``).
* :mod:`fuzz.textfuzz` hypothesis strategies for compile_commands.json, query TOML and
  asm-offsets.h.
"""
