"""Drop the profiler's native status lines from stderr, keep everything else.

torch.profiler's C++ backend (Kineto) writes ``USDT: ... profiler_start`` / ``profiler_stop`` (and, with
``KINETO_LOG_LEVEL`` below 3, ``STAGE: ...``) lines straight to file descriptor 2 each time a profiler
starts and stops; no environment variable or Python setting turns them off (KINETO_LOG_LEVEL 0-5 tried with
torch 2.13.0: the USDT lines stay). So :func:`profiler_started` points fd 2 at a temporary file while the
profiler starts and while it stops (not while the profiled code runs), then writes back every captured line
that is not such a status line: warnings and errors printed meanwhile still reach stderr, in order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

NATIVE_STATUS_PREFIXES = (b"USDT:", b"STAGE:")


@contextlib.contextmanager
def native_status_lines_dropped() -> Iterator[None]:
    """fd 2 goes to a temporary file inside the block; afterwards its lines, less the status lines, are
    written to the real stderr. Where fd 2 cannot be duplicated, the block runs unchanged."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture if not line.startswith(NATIVE_STATUS_PREFIXES)]
            if kept:
                os.write(2, b"".join(kept))


@contextlib.contextmanager
def profiler_started(prof) -> Iterator:
    """``with profiler_started(torch.profiler.profile(...)) as prof:`` - the profiler's own ``with``, with
    its start and stop status lines dropped."""
    with native_status_lines_dropped():
        prof.__enter__()
    try:
        yield prof
    finally:
        with native_status_lines_dropped():
            prof.__exit__(None, None, None)
