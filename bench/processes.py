"""Child processes of the benchmark and what they used. Only the children the harness started are ever
signalled, each by its own pid.

CPU seconds come from wait4's rusage. Peak RSS does not: Linux carries the parent's high-water mark over
fork and exec into the child's ru_maxrss, so the harness's own size would leak into every child. It is the
child's VmHWM instead (/proc/<pid>/status, the peak of its own address space), read while it runs, and
reported by the benchmark's own children (runner, Logic App model) at their very end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PYTHON = sys.executable
# The repository root: `python -m bench…` and `python -m tests.sbdouble` run from here.
ROOT = Path(__file__).resolve().parent.parent


class ChildFailed(RuntimeError):
    pass


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """The process's VmHWM in MiB; None once it has exited (a zombie has no address space left)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_rss_mib: float | None  # as last seen while it ran
    exit_code: int


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    spawned: float  # time.monotonic() just before it was started
    stdout_path: Path
    stderr_path: Path
    usage: Usage | None = None
    _peak_rss_mib: float | None = None

    def note_peak(self) -> None:
        if self.usage is None and (peak := peak_rss_mib(self.pid)) is not None:
            self._peak_rss_mib = max(peak, self._peak_rss_mib or 0.0)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def reap(self, *, block: bool) -> Usage | None:
        """The child's usage once it has exited (None while it runs and `block` is false)."""
        if self.usage is None:
            self.note_peak()
            pid, status, rusage = os.wait4(self.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return None
            code = os.waitstatus_to_exitcode(status)
            self.popen.returncode = code  # it is reaped: Popen must not wait for it again
            self.usage = Usage(rusage.ru_utime + rusage.ru_stime, self._peak_rss_mib, code)
        return self.usage

    def signal(self, signum: signal.Signals) -> None:
        if self.usage is None:  # not reaped yet, so the pid is still ours (at worst a zombie)
            os.kill(self.pid, signum)

    def stop(self, grace_seconds: float = 30.0) -> Usage:
        """SIGTERM, then SIGKILL if it has not exited within `grace_seconds`."""
        if self.reap(block=False) is None:
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_seconds
            while self.reap(block=False) is None:
                if time.monotonic() > deadline:
                    self.signal(signal.SIGKILL)
                    break
                time.sleep(0.05)
        usage = self.reap(block=True)
        assert usage is not None
        return usage

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr_tail(self, characters: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-characters:]
        return ""

    def wait_for_line(self, accept: Callable[[str], bool], timeout_seconds: float) -> str:
        """The first line of its stdout that `accept`s, waiting while it starts up."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            for line in self.stdout().splitlines():
                if accept(line):
                    return line
            if self.reap(block=False) is not None:
                raise ChildFailed(f"{self.name} exited ({self.usage}) before it was ready:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise ChildFailed(f"{self.name} was not ready within {timeout_seconds:.0f} s:\n{self.stderr_tail()}")
            time.sleep(0.1)


@dataclass
class Children:
    """Every child a scenario started; leaving the block stops whichever still run."""

    directory: Path
    started: list[Child] = field(default_factory=list)

    def spawn(self, name: str, arguments: Sequence[str], env: Mapping[str, str]) -> Child:
        stdout_path = self.directory / f"{name}.out"
        stderr_path = self.directory / f"{name}.err"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            spawned = time.monotonic()
            popen = subprocess.Popen([PYTHON, *arguments], cwd=ROOT, env=dict(env), stdout=stdout, stderr=stderr)
        child = Child(name, popen, spawned, stdout_path, stderr_path)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            child.stop(grace_seconds=10)


@contextlib.contextmanager
def children(directory: Path) -> Iterator[Children]:
    group = Children(directory)
    try:
        yield group
    finally:
        group.stop_all()


def base_environment() -> dict[str, str]:
    """The harness's environment without any TIBRIDGE_* setting of the shell it was started from."""
    return {name: value for name, value in os.environ.items() if not name.startswith("TIBRIDGE_")}
