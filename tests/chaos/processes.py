"""A worker process of a chaos test: started in its own session, logging to a file, SIGKILLed alone."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL = 40


class WorkerProcess:
    """One worker process (``python -m MODULE``), its log in a file.

    Args:
        name: how failure messages name it.
        env: its whole environment.
        log: where its stdout and stderr go.
        module: what it runs (default: ``changeguard worker``).
        ready_marker: the log text that says it polls.
    """

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log: Path,
        *,
        module: tuple[str, ...] = ("cli.main", "worker"),
        ready_marker: str = "worker started",
    ) -> None:
        self.name = name
        self.log = log
        self.ready_marker = ready_marker
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for pytest does not reach it
        )

    def tail(self) -> str:
        """The last lines of the worker's log, for failure messages."""
        lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        return f"--- {self.name} (pid {self.proc.pid}, exit {self.proc.poll()}) ---\n" + "\n".join(
            lines
        )

    async def ready(self, within: float = 30.0) -> None:
        """Wait until the worker logged that it polls (bounded); fail with its log otherwise."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.ready_marker in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited during start-up\n{self.tail()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} did not start within {within}s\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL this process (it alone) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._out.close()
