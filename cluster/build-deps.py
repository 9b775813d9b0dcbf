"""Install what `pip install` needs to compile packgate's C scoring core, when it is missing.

Why this exists: `make venv` compiles `_ngramcore.c` through setuptools, which needs a C compiler
and the headers of the Python that builds the venv. A fresh Debian/Ubuntu machine may have
neither, and nothing is installed by hand, so this installs them with apt-get (as root, or
through sudo) only when they are absent; anywhere else it says exactly what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def missing() -> list[str]:
    packages = []
    if not (shutil.which("cc") or shutil.which("gcc")):
        packages += ["gcc", "libc6-dev"]
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        packages.append(f"python{sys.version_info.major}.{sys.version_info.minor}-dev")
    return packages


def main() -> int:
    packages = missing()
    if not packages:
        return 0
    if not shutil.which("apt-get"):
        print(f"build-deps: install {' '.join(packages)} (a C compiler and Python headers)")
        return 1
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"build-deps: installing {' '.join(packages)}", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    subprocess.run(install, check=True, env=env)
    return 0 if not missing() else 1


if __name__ == "__main__":
    sys.exit(main())
