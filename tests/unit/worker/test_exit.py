"""worker/exit.py: programs leave with their own exit code, flushed, past the SDK's exit-time crash."""

from __future__ import annotations

import subprocess
import sys


def run(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_program_exits_with_its_code_and_its_output_flushed() -> None:
    done = run(
        "from worker.exit import run_and_exit\nprint('done', end='')\nrun_and_exit(lambda: 3)"
    )
    assert (done.returncode, done.stdout) == (3, "done")


def test_an_unexpected_exception_is_printed_and_exits_1() -> None:
    def_main = "def main():\n    raise ValueError('boom')\n"
    failed = run(f"from worker.exit import run_and_exit\n{def_main}run_and_exit(main)")
    assert failed.returncode == 1
    assert "ValueError: boom" in failed.stderr


def test_a_cancellation_escaping_the_program_is_printed_too() -> None:
    """A ``CancelledError`` is no ``Exception``: a bench once ended with 1 and said nothing."""
    def_main = "import asyncio\ndef main():\n    raise asyncio.CancelledError('lost')\n"
    failed = run(f"from worker.exit import run_and_exit\n{def_main}run_and_exit(main)")
    assert failed.returncode == 1
    assert "CancelledError: lost" in failed.stderr


def test_sys_exit_keeps_its_code_without_a_traceback() -> None:
    """The ``--help`` of argparse exits 0 and a usage error 2, through ``SystemExit``."""
    for code in (0, 2):
        done = run(
            "import sys\nfrom worker.exit import run_and_exit\n"
            f"def main():\n    sys.exit({code})\nrun_and_exit(main)"
        )
        assert (done.returncode, done.stderr) == (code, "")
    worded = run(
        "import sys\nfrom worker.exit import run_and_exit\nrun_and_exit(lambda: sys.exit('no'))"
    )
    assert (worded.returncode, worded.stderr.strip()) == (1, "no")
