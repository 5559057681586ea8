"""Build and run the project's Dockerfile with buildah, on a Debian root built by debootstrap.

No container registry is needed: the Dockerfile's base (``BASE_IMAGE``, Debian bookworm)
is stood in for by a bookworm root that debootstrap builds from Debian's archive, the
same distribution, release and Python. That base is cached between runs, keyed by a hash
of its recipe: in buildah's own image store and as a tarball in the cache directory
($GUARDPROXY_IMAGE_CACHE, else /var/cache/guardproxy-image when writable, else
~/.cache/guardproxy-image). The machine's CA bundle goes into the stand-in root, so that
apt and pip inside the build trust what the machine trusts (a TLS-inspecting egress
proxy, for one).

The build keeps its layers (``--layers``), so an unchanged apt step is not run again;
the image a rebuild replaces is removed, with the layers only it used.

Isolation is chroot (``buildah bud/run --isolation chroot``): it needs root, and runs in
the machine's network namespace, so the image's process reaches servers on loopback and
serves on a host port.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("GUARDPROXY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
IMAGE_TAG = "localhost/guardproxy:image-test"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# The stand-in's sources: those of Debian's own bookworm images, security updates included.
_SOURCES = f"""Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
_BASE_CONTAINERFILE = (
    'FROM scratch\nADD base.tar /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nCMD ["bash"]\n'
)
_DEBOOTSTRAP = ["debootstrap", "--variant=minbase", SUITE]


def missing_prerequisites() -> list[str]:
    """What this machine lacks to build and run the image (empty: nothing)."""
    missing = [tool for tool in ("buildah", "debootstrap", "tar") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (debootstrap and chroot isolation need it)")
    return missing


def cache_dir() -> Path:
    if configured := os.environ.get("GUARDPROXY_IMAGE_CACHE"):
        return Path(configured)
    system = Path("/var/cache/guardproxy-image")
    if os.access(system.parent, os.W_OK):
        return system
    return Path.home() / ".cache" / "guardproxy-image"


def _run(args: list[str], *, timeout: float, log: Path | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with the tail of its output."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(args[:3])} ... exited with {done.returncode}:\n{tail}")
    return done


def _image_exists(ref: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, timeout=60).returncode == 0


def base_key() -> str:
    """A hash of everything the stand-in base is made of."""
    recipe = json.dumps([_DEBOOTSTRAP, MIRROR, _SOURCES, _BASE_CONTAINERFILE]).encode()
    return hashlib.sha256(recipe + HOST_CA_BUNDLE.read_bytes()).hexdigest()[:16]


@dataclass
class Timings:
    base_s: float = 0.0
    base_from: str = ""
    build_s: float = 0.0


def ensure_base(timings: Timings, log: Path) -> str:
    """The stand-in base's image reference: from buildah's store, the cached tarball, or
    built now with debootstrap."""
    key = base_key()
    ref = f"localhost/guardproxy-base:{key}"
    start = time.monotonic()
    if _image_exists(ref):
        timings.base_from = "buildah's store"
        return ref
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"base-{key}.tar"
    timings.base_from = "the cached tarball"
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        work = Path(tmp)
        if not tarball.exists():
            timings.base_from = "debootstrap"
            root = work / "root"
            _run([*_DEBOOTSTRAP, str(root), MIRROR], timeout=900, log=log)
            _prepare_root(root)
            partial = work / "base.tar"
            _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], timeout=300, log=log)
            os.replace(partial, tarball)  # whole or absent, for a run that follows
        context = work / "context"
        context.mkdir()
        os.link(tarball, context / "base.tar")
        (context / "Containerfile").write_text(_BASE_CONTAINERFILE)
        _run(["buildah", "bud", "--isolation", "chroot", "--pull=never", "-t", ref, str(context)], timeout=600, log=log)
    timings.base_s = time.monotonic() - start
    return ref


def _prepare_root(root: Path) -> None:
    """Trust what the machine trusts, take Debian's image sources, drop apt's caches."""
    certs = root / "etc/ssl/certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HOST_CA_BUNDLE, certs / "ca-certificates.crt")
    # Installing ca-certificates in the build regenerates the bundle from this folder;
    # Debian's pip reads that bundle.
    local = root / "usr/local/share/ca-certificates"
    local.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HOST_CA_BUNDLE, local / "build-machine-bundle.crt")
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(_SOURCES)
    for cache in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


def build_image(base: str, timings: Timings, log: Path) -> str:
    """The project's Dockerfile, as it is, on the stand-in base. ``--layers`` keeps the
    apt layer between runs; docker format keeps the HEALTHCHECK (OCI has none)."""
    start = time.monotonic()
    previous = _image_id(IMAGE_TAG)
    _run(
        [
            "buildah", "bud", "--isolation", "chroot", "--pull=never", "--layers", "--format", "docker",
            "--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE_TAG, "-f", str(REPO / "Dockerfile"), str(REPO),
        ],
        timeout=900,
        log=log,
    )  # fmt: skip
    timings.build_s = time.monotonic() - start
    if previous is not None and previous != _image_id(IMAGE_TAG):
        subprocess.run(["buildah", "rmi", previous], capture_output=True, timeout=120)
    return IMAGE_TAG


def _image_id(ref: str) -> str | None:
    done = subprocess.run(["buildah", "images", "--quiet", "--no-trunc", ref], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return done.stdout.strip().removeprefix("sha256:")


def image_config(ref: str) -> dict[str, Any]:
    """The image's Docker config: Entrypoint, Cmd, User, Env, Healthcheck, ExposedPorts."""
    out = _run(["buildah", "inspect", "--type", "image", ref], timeout=60)
    config: dict[str, Any] = json.loads(out.stdout)["Docker"]["config"]
    return config


def new_container(ref: str, name: str) -> str:
    subprocess.run(["buildah", "rm", name], capture_output=True, timeout=60)  # a leftover of a killed run
    return _run(["buildah", "from", "--pull-never", "--name", name, ref], timeout=120).stdout.strip()


def remove_container(name: str) -> None:
    subprocess.run(["buildah", "rm", name], capture_output=True, timeout=60)


def run_args(container: str, *, env: dict[str, str] | None = None, volumes: list[str] | None = None) -> list[str]:
    """``buildah run`` in the container, as its configured user, with these additions."""
    args = ["buildah", "run", "--isolation", "chroot"]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    for volume in volumes or []:
        args += ["--volume", volume]
    return [*args, container, "--"]


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, nearest first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def process_uids(pid: int) -> tuple[int, ...]:
    """Real, effective, saved and filesystem uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return tuple(int(u) for u in line.split()[1:])
    raise LookupError(pid)


def process_argv(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
