"""Progress on stderr: a rich status line on a terminal, plain ``scopecheck: ...`` lines otherwise.

Machine output goes to stdout; this never writes there. ``quiet`` silences it.
"""

from __future__ import annotations

import sys


class StatusLine:
    """Context manager and callable: ``with StatusLine(quiet) as say: say("reading DWARF")``.

    On a terminal one rich status line is updated in place; otherwise each new message
    (as reduced by :meth:`plain`) is printed once, so CI logs stay short.
    """

    def __init__(self, quiet: bool = False, title: str = "scopecheck"):
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal and not quiet
        self.title = title
        self.status = None
        self.last: str | None = None

    def __enter__(self) -> "StatusLine":
        if self.live:
            self.status = self.console.status(self.title, spinner="dots")
            self.status.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if self.status is not None:
            self.status.__exit__(*exc)
            self.status = None
        return False

    def plain(self, msg: str) -> str | None:
        """The line to print without a terminal (None: print nothing). Subclasses shorten it."""
        return msg

    def __call__(self, msg: str) -> None:
        if self.quiet:
            return
        if self.status is not None:
            self.status.update(msg)
            return
        line = self.plain(msg)
        if line is not None and line != self.last:
            self.last = line
            print(f"scopecheck: {line}", file=sys.stderr, flush=True)
