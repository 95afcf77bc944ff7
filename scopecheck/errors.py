"""Errors that end a command with one clear line and exit status 2."""


class ScopecheckError(Exception):
    """A user-facing error: bad input, missing tool, unusable file.

    The CLI prints ``scopecheck: <message>`` on stderr and exits 2.
    Library users catch it like any other exception.
    """

    exit_code = 2


class InputError(ScopecheckError):
    """The file or directory given cannot be analysed."""


class ToolMissing(ScopecheckError):
    """An external program is not installed; the message names its package."""

    def __init__(self, program: str, package: str):
        super().__init__(f"{program} not found (install the Debian package '{package}')")
        self.program = program
        self.package = package

    def __reduce__(self):  # raised in a worker process, it travels back whole
        return (type(self), (self.program, self.package))
