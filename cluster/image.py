"""Build the packgate image for the local node from the Dockerfile's recipe, without Docker.

Why: pods on the local node must run the image users run, and this machine has no Docker or
registry. The recipe is the Dockerfile's: a virtualenv at /opt/packgate holding the project
installed with pip (its C extension compiled by the build toolchain, which never enters the
image), byte-compiled, test directories removed; the runtime stage's environment, user,
entrypoint, command and ports are read from the Dockerfile itself, so the two cannot drift
(tests/unit/test_image_recipe.py checks the rest). The operating system is Debian bookworm's
minimal base from debootstrap with Debian's python3.

Two layers, cached under ~/.cache/packgate/image:
- base: debootstrap + the virtualenv with the dependencies only, keyed by the suite, the
  dependency list and this recipe's version (minutes, once);
- project: the packgate wheel installed into that virtualenv, keyed by the content of the
  wheel's inputs (pyproject.toml, README.md, sidecar/, operator/) (seconds, on each code change).

    python cluster/image.py            build what is missing, print the image tarball and name
    python cluster/image.py --name     print the image name only (no build)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import sandbox
from ociimage import Image, ImageConfig, Layer, layer_from_dir, layer_from_file, write_images

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PACKGATE_CACHE", Path.home() / ".cache" / "packgate")) / "image"
SUITE = "bookworm"
# Bump when the recipe below changes in a way that changes the base layer.
RECIPE_VERSION = "1"
REPOSITORY = "ghcr.io/packgate/packgate"
# The tests' and the demo's application: the same base plus the stock OpenAI SDK (never
# part of the product image).
APP_REPOSITORY = "ghcr.io/packgate/packgate-demo-app"
# What the Dockerfile copies into its build stage: the wheel's inputs.
WHEEL_INPUTS = ("pyproject.toml", "README.md", "sidecar", "operator")
VENV = "/opt/packgate"


class ImageError(RuntimeError):
    """A build step failed; the message names the step and shows its output."""


def say(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], step: str, *, host_network: bool = False) -> None:
    if host_network:  # set-up steps that fetch from Debian or PyPI
        result = sandbox.run_in_host_network(argv, capture_output=True)
    else:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"{step} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


# --- the Dockerfile's runtime stage -----------------------------------------------------------


def dockerfile_runtime(dockerfile: Path = ROOT / "Dockerfile") -> ImageConfig:
    """ENV, USER, EXPOSE, ENTRYPOINT and CMD of the Dockerfile's last stage."""
    lines: list[str] = []
    for raw in dockerfile.read_text().splitlines():
        if raw.strip().startswith("#"):
            continue
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + raw.strip()
        else:
            lines.append(raw.strip())
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        elif stages and line:
            stages[-1].append(line)
    env: dict[str, str] = {}
    user, entrypoint, cmd, ports = "", [], [], []
    for line in stages[-1]:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
        elif word == "USER":
            user = rest.strip()
        elif word == "EXPOSE":
            ports = rest.split()
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
    base_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {key: value.replace("$PATH", base_path) for key, value in env.items()}
    return ImageConfig(
        entrypoint=entrypoint,
        cmd=cmd,
        env=[f"{key}={value}" for key, value in env.items()],
        user=user,
        exposed_ports=ports,
    )


# --- cache keys -------------------------------------------------------------------------------


def dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(project["dependencies"])


def base_key() -> str:
    text = json.dumps([RECIPE_VERSION, SUITE, dependencies()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _input_files() -> list[Path]:
    files: list[Path] = []
    for name in WHEEL_INPUTS:
        path = ROOT / name
        if path.is_file():
            files.append(path)
            continue
        for found in path.rglob("*"):
            parts = found.relative_to(ROOT).parts
            generated = any(p == "__pycache__" or p.endswith(".egg-info") for p in parts)
            if found.is_file() and not generated and found.suffix not in (".pyc", ".so"):
                files.append(found)
    return sorted(files)


def project_key() -> str:
    sha = hashlib.sha256(base_key().encode())
    sha.update(repr(dockerfile_runtime()).encode())
    for path in _input_files():
        sha.update(str(path.relative_to(ROOT)).encode() + b"\0")
        sha.update(path.read_bytes() + b"\0")
    return sha.hexdigest()[:12]


def tag(key: str | None = None) -> str:
    """The image tag: the chart's one documented override is `--set image.tag=<this>`."""
    return f"dev-{key or project_key()}"


def name(key: str | None = None) -> str:
    return f"{REPOSITORY}:{tag(key)}"


# --- builds -----------------------------------------------------------------------------------


def _chroot(rootfs: Path, script: str, step: str) -> None:
    # A private mount namespace for /proc, so nothing stays mounted on the host.
    _run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t proc proc {rootfs}/proc && "
            f"chroot {rootfs} /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp "
            f"sh -ec {shlex.quote(script)}",
        ],
        step,
    )


def _pip() -> str:
    return str(Path(sys.executable).with_name("pip"))


def build_base() -> tuple[Path, Layer]:
    """Debian minbase + python3 + a virtualenv holding the dependencies (not packgate)."""
    base = CACHE / f"base-{base_key()}"
    rootfs, layer_path = base / "rootfs", base / "layer.tar"
    if layer_path.exists() and (rootfs / "usr/bin/python3").exists():
        return rootfs, layer_from_file(layer_path)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    if shutil.which("debootstrap") is None:
        say("installing debootstrap (apt-get)")
        _run(
            ["apt-get", "install", "-y", "-q", "debootstrap"], "apt-get install", host_network=True
        )
    say(f"debootstrap {SUITE} minbase (about a minute)")
    _run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", SUITE, str(rootfs)],
        "debootstrap",
        host_network=True,
    )
    wheels = rootfs / "wheels"
    say("dependency wheels (pip wheel)")
    _run(
        [_pip(), "wheel", "--quiet", "--wheel-dir", str(wheels), *dependencies()],
        "pip wheel",
        host_network=True,
    )
    deps = " ".join(shlex.quote(dep) for dep in dependencies())
    _chroot(
        rootfs,
        f"python3 -m venv {VENV} && {VENV}/bin/pip install --quiet --no-cache-dir --no-compile "
        f"--no-index --find-links /wheels {deps} && {VENV}/bin/python -m compileall -q {VENV}/lib "
        f"&& find {VENV} -name '*.dist-info' -prune -o -name tests -type d -prune "
        "-exec rm -rf {} +",
        "virtualenv with dependencies",
    )
    shutil.rmtree(wheels)
    for junk in (
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "tmp/.cache",
    ):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
    (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
    say("packing the base layer")
    return rootfs, layer_from_dir(rootfs, layer_path)


def build_project_layer(rootfs: Path, key: str) -> Layer:
    """The packgate wheel (C extension compiled here) installed into the base's virtualenv."""
    out = CACHE / f"project-{key}.tar"
    if out.exists():
        return layer_from_file(out)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        wheels = Path(tmp) / "wheels"
        src = Path(tmp) / "src"
        src.mkdir()
        for name_ in WHEEL_INPUTS:  # a clean copy: no stale build/ or egg-info from the checkout
            if (ROOT / name_).is_dir():
                shutil.copytree(
                    ROOT / name_,
                    src / name_,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "*.pyc"),
                )
            else:
                shutil.copy2(ROOT / name_, src / name_)
        say("building the packgate wheel")
        _run(
            [_pip(), "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(src)],
            "pip wheel .",
            host_network=True,
        )
        (wheel,) = wheels.glob("packgate-*.whl")
        staged = rootfs / "stage"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copy2(wheel, rootfs / wheel.name)
        try:
            _chroot(
                rootfs,
                f"{VENV}/bin/pip install --quiet --no-cache-dir --no-compile --no-deps --no-index "
                f"--root /stage /{wheel.name} && {VENV}/bin/python -m compileall -q -s /stage "
                f"/stage{VENV}/lib && find /stage -name '*.dist-info' -prune -o -name tests "
                "-type d -prune -exec rm -rf {} +",
                "installing the packgate wheel",
            )
            layer = layer_from_dir(staged, out)
        finally:
            (rootfs / wheel.name).unlink(missing_ok=True)
            shutil.rmtree(staged, ignore_errors=True)
    return layer


def build_openai_layer(rootfs: Path) -> Layer:
    """The OpenAI SDK (the version the tests use) in the same virtualenv, for the app image."""
    version = importlib.metadata.version("openai")
    out = CACHE / f"openai-{version}-{base_key()}.tar"
    if out.exists():
        return layer_from_file(out)
    wheels = rootfs / "wheels"
    staged = rootfs / "stage"
    shutil.rmtree(staged, ignore_errors=True)
    say(f"openai {version} for the app image")
    _run(
        [_pip(), "download", "--quiet", "--dest", str(wheels), f"openai=={version}"],
        "pip download openai",
        host_network=True,
    )
    try:
        _chroot(
            rootfs,
            f"{VENV}/bin/pip install --quiet --no-cache-dir --no-index --find-links /wheels "
            f"--root /stage openai=={version}",
            "installing openai",
        )
        return layer_from_dir(staged, out)
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
        shutil.rmtree(staged, ignore_errors=True)


@dataclass(frozen=True)
class BuiltImage:
    tarball: Path  # one OCI layout holding both images
    name: str  # the packgate image (operator and sidecar)
    app_name: str  # packgate + the OpenAI SDK: the tests' and the demo's application


def build() -> BuiltImage:
    key = project_key()
    out = CACHE / f"packgate-{key}.oci.tar"
    app = f"{APP_REPOSITORY}:{tag(key)}"
    if out.exists():
        return BuiltImage(out, name(key), app)
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs, base = build_base()
    project = build_project_layer(rootfs, key)
    sdk = build_openai_layer(rootfs)
    runtime = dockerfile_runtime()
    app_config = ImageConfig(env=runtime.env, user=runtime.user, cmd=["python"])
    write_images(
        out,
        [
            Image(name(key), [base, project], runtime),
            Image(app, [base, project, sdk], app_config),
        ],
    )
    for old in CACHE.glob("packgate-*.oci.tar"):  # one project image at a time is enough
        if old != out:
            old.unlink()
    for old in CACHE.glob("project-*.tar"):
        if old != project.path:
            old.unlink()
    return BuiltImage(out, name(key), app)


def pause_image(bin_dir: Path) -> BuiltImage:
    """The sandbox ("pause") image: one static binary built by cluster/build-node.sh."""
    binary = (bin_dir / "pause").resolve()
    version = binary.name.removeprefix("pause-")
    ref = f"localhost/packgate/pause:{version}"
    out = CACHE / f"pause-{version}.oci.tar"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            shutil.copy2(binary, Path(tmp) / "pause")
            layer = layer_from_dir(Path(tmp), Path(tmp + ".layer.tar"))
            image = Image(ref, [layer], ImageConfig(entrypoint=["/pause"], user="65535:65535"))
            write_images(out, [image])
            layer.path.unlink()
    return BuiltImage(out, ref, "")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--name"]:
        print(name())
        return 0
    built = build()
    print(built.tarball)
    print(built.name)
    print(built.app_name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
