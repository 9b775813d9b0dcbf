"""The benchmarks (`make bench`), a package so that bench/run.py can run them side by side.

They start the same harness processes as the tests (cluster/: the control plane, the operator,
the collector, free loopback ports); cluster/ is a directory of scripts, not a package, so it goes
on the import path here, once, as pytest's `pythonpath` does for the tests.
"""

import sys
from pathlib import Path

_CLUSTER = str(Path(__file__).resolve().parent.parent / "cluster")
if _CLUSTER not in sys.path:
    sys.path.insert(0, _CLUSTER)
