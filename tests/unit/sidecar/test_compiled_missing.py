"""compiled: without its C extensions (a checkout used without `pip install`) the sidecar still
works, on the Python paths, and says once in the log which extension is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CASES = [
    (
        "packgate_sidecar._jsonscan",
        "from packgate_sidecar import strict_json as m; "
        "assert m.loads(b'{\"a\": [1, 2]}') == {'a': [1, 2]}; "
        "assert m._quick is m._quick_ref",
        "compiled JSON scan unavailable",
    ),
    (
        "packgate_sidecar._sseframes",
        "from packgate_sidecar import sse_frames as m; assert not m.COMPILED; "
        "assert m.frame_texts is m.frame_texts_ref",
        "compiled SSE frame scan unavailable",
    ),
    (
        "packgate_sidecar._scrubscan",
        "from packgate_sidecar import scrub as m; assert m._contains is m._contains_ref; "
        "m.register(['sk-missing-0123']); assert m.scrub_bytes(b'a sk-missing-0123') == "
        "b'a [REDACTED]'",
        "compiled secret search unavailable",
    ),
    (
        "packgate_sidecar.audit._syncer",
        "from packgate_sidecar.audit import native as m; assert not m.AVAILABLE",
        "compiled audit syncer unavailable",
    ),
    (
        "packgate_sidecar.detect._ngramcore",
        "from packgate_sidecar.detect import ngram as m; assert not m.COMPILED",
        "compiled scoring core unavailable",
    ),
]


@pytest.mark.parametrize(("blocked", "check", "message"), CASES)
def test_a_missing_extension_falls_back_and_is_logged(
    blocked: str, check: str, message: str
) -> None:
    script = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
        sys.modules[{blocked!r}] = None  # import fails as if it was never built
        {check}
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert message in run.stderr
    assert "reinstall packgate (pip install .)" in run.stderr
