"""Run one fuzz case in-process, bounded in time, and classify how it ended.

Outcomes mirror the CLI (``scopecheck/cli.py``): a return is exit 0, a
:class:`~scopecheck.errors.ScopecheckError` is exit 2 with ``scopecheck: <message>`` on
stderr, which must be one line. Anything else would be the CLI's "internal error": here a
CRASH. A case that outlives its bound is a HANG (SIGALRM in the main thread raises
:class:`CaseTimeout`, a BaseException so the library's ``except Exception`` cannot swallow it).
"""

from __future__ import annotations

import resource
import signal
import time
import traceback
from dataclasses import dataclass, field

from scopecheck.errors import ScopecheckError


class CaseTimeout(BaseException):
    """Raised in the main thread when a case exceeds its time bound."""


@dataclass(slots=True)
class Outcome:
    status: str  # ok | error (exit 2) | crash | hang
    exit_code: int | None
    detail: str = ""
    elapsed: float = 0.0


@dataclass(slots=True)
class Failure:
    lane: str
    seed: int
    mutation: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status.upper()}: lane={self.lane} seed={self.seed} mutation={self.mutation}: {self.detail}"


@dataclass(slots=True)
class Tally:
    cases: int = 0
    ok: int = 0
    errors: int = 0
    crashes: int = 0
    hangs: int = 0
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    failures: list = field(default_factory=list)
    by_lane: dict = field(default_factory=dict)

    def add(self, lane: str, seed: int, mutation: str, o: Outcome) -> None:
        self.cases += 1
        self.by_lane[lane] = self.by_lane.get(lane, 0) + 1
        if o.status == "ok":
            self.ok += 1
        elif o.status == "error":
            self.errors += 1
        else:
            if o.status == "hang":
                self.hangs += 1
            else:
                self.crashes += 1
            self.failures.append(Failure(lane, seed, mutation, o.status, o.detail))

    def merge(self, other: "Tally") -> None:
        self.cases += other.cases
        self.ok += other.ok
        self.errors += other.errors
        self.crashes += other.crashes
        self.hangs += other.hangs
        self.peak_rss_mb = max(self.peak_rss_mb, other.peak_rss_mb)
        self.failures.extend(other.failures)
        for k, v in other.by_lane.items():
            self.by_lane[k] = self.by_lane.get(k, 0) + v

    def summary(self) -> str:
        return (f"fuzz: {self.cases} cases, crashes {self.crashes}, hangs {self.hangs}, "
                f"peak RSS {self.peak_rss_mb:.0f} MB")


def _on_alarm(signum, frame):
    raise CaseTimeout()


def run_case(fn, timeout: float, *, debug: bool = False) -> Outcome:
    """Call ``fn()`` with a wall-clock bound; classify the result."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    t0 = time.perf_counter()
    try:
        fn()
        out = Outcome("ok", 0)
    except CaseTimeout:
        out = Outcome("hang", None, f"no result after {timeout:.1f} s")
    except ScopecheckError as e:
        msg = str(e)
        if "\n" in msg or "\r" in msg or not msg.strip():
            out = Outcome("crash", 2, f"error message is not one line: {msg!r}")
        else:
            out = Outcome("error", e.exit_code, msg)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - every other exception is a crash
        if debug:
            traceback.print_exc()
        tb = traceback.extract_tb(e.__traceback__)
        where = tb[-1] if tb else None
        loc = f" at {where.filename.rsplit('/', 3)[-1] if where else '?'}:{where.lineno if where else '?'}"
        out = Outcome("crash", None, f"{type(e).__name__}: {str(e)[:300]}{loc}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    out.elapsed = time.perf_counter() - t0
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
