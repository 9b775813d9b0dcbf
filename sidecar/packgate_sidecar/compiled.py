"""Saying that a compiled extension is missing, the same way for each of them.

Why it exists: the sidecar's hot loops (the injection scoring core, the JSON strictness scan, the
SSE frame scan, the secret search) and the audit syncer are C extensions that `pip install` builds,
each with a Python path it must agree with. A checkout used without installing has none of them;
the sidecar then runs the Python path, correct but slower, and says so once in the log with what
it costs.
"""

from __future__ import annotations

import logging

_log = logging.getLogger("packgate.compiled")


def missing(what: str, exc: ImportError, instead: str) -> None:
    """Log that the compiled `what` could not be imported and what runs `instead`."""
    _log.warning(
        "compiled %s unavailable (%s); %s: reinstall packgate (pip install .) to build it",
        what,
        exc,
        instead,
    )
