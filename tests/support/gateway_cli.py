"""The command line of `packgate gateway run` on loopback ports, for tests, benchmarks and the demo.

Why it exists: tests that need real signals, the benchmarks and the demo start the sidecar as a
process of its own; building its argv in one place keeps their flags in step with the CLI. It
lives beside the runtime packages, not in them: only tooling starts a gateway this way.
"""

from __future__ import annotations

import sys
from pathlib import Path


def gateway_argv(
    port: int,
    admin_port: int,
    config: Path,
    data_dir: Path | None = None,
    *extra: str,
) -> list[str]:
    """argv for `packgate gateway run` serving on 127.0.0.1:`port`, admin on `admin_port`;
    `extra` flags (e.g. `--drain-seconds`, `10`) go last."""
    argv = [sys.executable, "-m", "packgate_sidecar.cli", "gateway", "run"]
    argv += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}"]
    argv += ["--policy-config", str(config)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    return [*argv, *extra]
