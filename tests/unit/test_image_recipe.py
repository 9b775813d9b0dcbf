"""The local node's image recipe (cluster/image.py) and the Dockerfile stay in step.

The recipe reads the runtime stage (environment, user, entrypoint, command, ports) from the
Dockerfile itself; these tests check that parse, and that the build steps the recipe repeats
(virtualenv at the same path, pip install, byte-compile, test directories removed) are the
Dockerfile's, so an edit to one without the other fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import image

DOCKERFILE = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()


def test_runtime_config_is_read_from_the_dockerfile() -> None:
    runtime = image.dockerfile_runtime()
    assert runtime.user == re.findall(r"^USER (\S+)", DOCKERFILE, re.M)[-1]
    assert list(runtime.entrypoint) == json.loads(
        re.findall(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.M)[-1]
    )
    assert list(runtime.cmd) == json.loads(re.findall(r"^CMD (.+)$", DOCKERFILE, re.M)[-1])
    env = dict(item.split("=", 1) for item in runtime.env)
    assert env["PATH"].startswith(f"{image.VENV}/bin:")
    assert env["HOME"] == "/tmp" and env["PYTHONUNBUFFERED"] == "1"
    assert runtime.user == "65532:65532"  # non-root, as the chart's securityContext expects


def test_the_recipe_repeats_the_dockerfiles_build_steps() -> None:
    assert f"python -m venv {image.VENV}" in DOCKERFILE
    assert f"{image.VENV}/bin/pip install --no-compile ." in DOCKERFILE
    assert f"{image.VENV}/bin/python -m compileall -q {image.VENV}/lib" in DOCKERFILE
    assert "-name 'tests' -type d -prune -exec rm -rf {} +" in DOCKERFILE
    # What the Dockerfile copies into its build stage is what the recipe hashes and builds.
    copied = {
        part.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M)
        for part in line.split()
    }
    assert copied == set(image.WHEEL_INPUTS)
