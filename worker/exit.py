"""The one workaround for the SDK's exit-time crash: flush everything, then leave at once.

The Temporal SDK's native runtime can crash (SIGSEGV/SIGABRT) while the interpreter finalises after
a client or worker was used, turning a correct run into exit code -11. Every process changeguard
starts as a program (the CLI, the benches, the chaos campaign) ends through :func:`exit_now`:
everything it owns is done by then, so it flushes spans and output and exits with its own code.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush batched spans, stdout and stderr, and exit with ``code`` without finalisation."""
    from worker import telemetry

    telemetry.flush()  # spans still batched would be lost at os._exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
