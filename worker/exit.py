"""The one workaround for the SDK's exit-time crash: flush everything, then leave at once.

The Temporal SDK's native runtime can crash (SIGSEGV/SIGABRT) while the interpreter finalises after
a client or worker was used, turning a correct run into exit code -11. Every process changeguard
starts as a program (the CLI, the benches, the chaos campaign) ends through :func:`exit_now`:
everything it owns is done by then, so it flushes spans and output and exits with its own code.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush batched spans, stdout and stderr, and exit with ``code`` without finalisation."""
    from worker import telemetry

    telemetry.flush()  # spans still batched would be lost at os._exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_and_exit(main: Callable[[], int]) -> NoReturn:
    """Run a program's ``main`` and leave through :func:`exit_now` with its code.

    An interrupt or any other exception (``CancelledError`` included) is reported on stderr and
    exits 1.
    """
    code = 1
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except SystemExit as exc:  # argparse's --help (0) and usage errors (2), sys.exit(...)
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # a CancelledError escaping asyncio.run too: never a silent exit 1
        traceback.print_exc()
    finally:
        exit_now(code)
