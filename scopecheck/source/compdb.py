"""compile_commands.json: load a compilation database, turn gcc arguments into libclang ones.

Both entry forms are accepted (``arguments`` list or ``command`` string). A relative
``directory`` is resolved against the folder holding the JSON file (the mini-hyp
fixture's scheme); ``file`` and relative ``-I`` paths are resolved against it.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from scopecheck.errors import InputError

TARGET = "--target=aarch64-linux-gnu"
EXTRA = ("-ferror-limit=0", "-Wno-everything")

# options taking a value (either joined, -Ifoo, or as the next argument, -I foo)
_PATH_OPTS = ("-I", "-isystem", "-include", "-iquote", "-idirafter")
_VALUE_OPTS = ("-D", "-U")


@dataclass(frozen=True, slots=True)
class CompileCommand:
    file: str  # absolute, normalised
    directory: str  # absolute, normalised
    arguments: tuple[str, ...]  # as in the database (arguments[0] is the compiler driver)
    output: str | None = None

    @property
    def is_asm(self) -> bool:
        return self.file.endswith((".S", ".s"))


def _json_path(path_or_dir) -> Path:
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / "compile_commands.json"
    if not p.is_file():
        raise InputError(f"{p}: no compile_commands.json there")
    return p


def load(path_or_dir, source_root=None, keep=None) -> list[CompileCommand]:
    """The entries of ``compile_commands.json`` (a file, or a directory holding one).

    ``source_root``, when given, restricts the result to files below it; ``keep(file, command
    text)``, when given, selects entries before their command lines are split (a kernel's
    database has ~700 entries, of which hyp needs ~25).
    """
    jp = _json_path(path_or_dir)
    try:
        data = json.loads(jp.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{jp}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{jp}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # a number past int's digit limit; nesting past the stack
        raise InputError(f"{jp}: not a usable JSON file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
            from None
    if not isinstance(data, list):
        raise InputError(f"{jp}: not a compilation database (expected a JSON list of entries)")
    base = jp.resolve().parent
    root = Path(source_root).resolve() if source_root else None
    out = []
    for i, e in enumerate(data):
        if not isinstance(e, dict):
            raise InputError(f"{jp}: entry {i} is not an object")
        for k in ("directory", "file"):
            if not isinstance(e.get(k), str):
                raise InputError(f"{jp}: entry {i} has no '{k}' string")
        if keep is not None:
            raw = e.get("command") if isinstance(e.get("command"), str) else \
                " ".join(a for a in e.get("arguments") or () if isinstance(a, str))
            if not keep(e["file"], raw):
                continue
        if isinstance(e.get("arguments"), list) and all(isinstance(a, str) for a in e["arguments"]):
            args = tuple(e["arguments"])
        elif isinstance(e.get("command"), str):
            command = e["command"]
            try:
                # kbuild's commands rarely quote anything; str.split is 50x faster than shlex
                args = tuple(command.split() if not any(c in command for c in "'\"\\") else
                             shlex.split(command))
            except ValueError as err:
                raise InputError(f"{jp}: entry {i}: cannot split 'command' ({err})") from None
        else:
            raise InputError(f"{jp}: entry {i} has neither an 'arguments' list nor a 'command' string")
        directory = os.path.normpath(os.path.join(base, e["directory"]))
        file = os.path.normpath(os.path.join(directory, e["file"]))
        if root is not None and not Path(file).is_relative_to(root):
            continue
        output = e.get("output")
        out.append(CompileCommand(file=file, directory=directory, arguments=args,
                                  output=os.path.normpath(os.path.join(directory, output))
                                  if isinstance(output, str) else None))
    return out


def clang_args(cmd: CompileCommand) -> list[str]:
    """The gcc arguments libclang needs: -I/-isystem/-include/-D/-U/-std/-nostdinc, absolute paths.

    Plus ``--target=aarch64-linux-gnu -ferror-limit=0 -Wno-everything``. Everything else
    (optimisation, warnings, -W,a, code generation, -o, the source) is dropped.
    """
    args = list(cmd.arguments[1:])
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        i += 1
        if a in _PATH_OPTS:
            opt, val = a, nxt
            i += 1
        else:
            opt = next((o for o in ("-isystem", "-iquote", "-idirafter", "-I") if a.startswith(o)), None)
            val = a[len(opt):] if opt else None
        if opt:
            if val:
                out += [opt, os.path.normpath(os.path.join(cmd.directory, val))]
            continue
        opt = next((o for o in _VALUE_OPTS if a.startswith(o)), None)
        if opt:
            if a == opt:
                if nxt is None:
                    continue
                out.append(opt + nxt)
                i += 1
            else:
                out.append(a)
            continue
        if a.startswith("-std=") or a == "-nostdinc":
            out.append(a)
    return out + [TARGET, *EXTRA]
