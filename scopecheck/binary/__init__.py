"""The binary door: facts read from ELF files (DWARF with pyelftools, code with capstone).

Never imports ``scopecheck.source``.
"""
