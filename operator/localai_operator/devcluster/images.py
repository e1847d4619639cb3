"""Builds the project's container images without a Docker engine, cached by the content of their inputs.

Debian root filesystems made with mmdebstrap are the base images; buildah (chroot isolation, no daemon) builds the
root `Dockerfile` (the operator image, with `PYTHON_IMAGE` pointing at the local base), LocalAI itself (`localai`:
LocalAI v4.9.0 and its llama-cpp backend built from pinned sources by `localai.py`, package data in
`images/localai/`) and the real node's model mirror (`images/model-mirror/`); each result is written as an OCI
archive that `ctr images import` names `docker.io/library/<name>:<tag>`, the reference Kubernetes resolves
`<name>:<tag>` to. The tag is `dev-` plus the first 12 hex digits of the inputs' key, so a rebuild happens only
when an input changes.

`python -m localai_operator.devcluster.images [operator|localai|model-mirror|all]` (what `make images` runs) builds
and prints one line per image: `<name>:<tag> <archive>`. The Debian tools come from `hack/image-tools.sh`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from localai_operator.devcluster import localai
from localai_operator.devcluster.binaries import cache_root

SUITE: Final = "bookworm"
# Runtime base of the operator image and the model mirror (Debian's python3 is 3.11, like CI's).
RUNTIME_PACKAGES: Final = (
    "python3",
    "python3-venv",
    "python3-pip",
    "python-is-python3",
    "ca-certificates",
)
# LocalAI's runtime base: its CPU image has ca-certificates and curl (its healthcheck.sh uses curl); the backend
# carries every library it links, its loader included (images/localai/build.sh).
LOCALAI_RUNTIME_PACKAGES: Final = ("ca-certificates", "curl")
# What LocalAI's llama-cpp backend builds with: gRPC, protobuf and abseil from Debian (gRPC 1.51), CMake and Ninja.
LOCALAI_BUILD_PACKAGES: Final = (
    "build-essential",
    "cmake",
    "ninja-build",
    "pkg-config",
    "patch",
    "libgrpc++-dev",
    "protobuf-compiler-grpc",
    "libprotobuf-dev",
    "protobuf-compiler",
    "libabsl-dev",
)
MIRROR_ENV: Final = "LOCALAI_OPERATOR_DEBIAN_MIRROR"
OPERATOR_IMAGE: Final = "localai-operator"
LOCALAI_IMAGE: Final = "localai-operator-localai"
MODEL_MIRROR_IMAGE: Final = "localai-operator-model-mirror"
CONTAINERD_PREFIX: Final = "docker.io/library/"
# What the model-mirror image serves at /<file>, and what fetch-models verifies.
MODEL_FILE: Final = "gemma-3-270m-q4_k_m.gguf"
MODEL_SHA256: Final = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
MODEL_SIZE: Final = 253_113_024
# The mirror program inside its image, and the directory it serves.
MIRROR_PROGRAM: Final = "/opt/model-mirror/mirror.py"
MIRROR_DIR: Final = "/srv/mirror"
# LocalAI's binary and its backends directory in the localai image (where LocalAI's own image has them).
LOCALAI_PROGRAM: Final = "/local-ai"
LOCALAI_BACKENDS: Final = "/backends"
_LOG_PREFIX: Final = "[images]"
_TOOLS_HINT: Final = (
    "run `make images` (it installs them with hack/image-tools.sh) or `hack/image-tools.sh` as root"
)
# The host's CA bundle is bind-mounted over the image's during RUN steps (never stored in a layer), so builds
# behind a TLS-inspecting proxy reach the package registries as the host does.
_HOST_CA_BUNDLES: Final = ("/etc/ssl/certs/ca-certificates.crt",)
_IMAGE_CA_BUNDLE: Final = "/etc/ssl/certs/ca-certificates.crt"


class ImageError(RuntimeError):
    """A build could not run or failed; the message says which step and what to do."""


@dataclass(frozen=True)
class Image:
    """A built image: `ref` is what a pod spec names, `archive` the OCI archive to import into containerd."""

    name: str
    tag: str
    archive: Path

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def containerd_ref(self) -> str:
        """The name the archive carries (`io.containerd.image.name`) and the kubelet looks up."""
        return f"{CONTAINERD_PREFIX}{self.ref}"

    @property
    def local_ref(self) -> str:
        """The name in the build storage, for `buildah from` / `buildah run`."""
        return f"localhost/{self.ref}"


@dataclass(frozen=True)
class Base:
    """A Debian root filesystem made by mmdebstrap, committed as a base image."""

    name: str
    packages: tuple[str, ...]

    def key(self, env: Mapping[str, str]) -> str:
        return _digest(
            ["base", self.name, SUITE, *self.packages, *_MMDEBSTRAP_OPTIONS, env.get(MIRROR_ENV, "")]
        )


BASES: Final = {
    "python": Base("python", RUNTIME_PACKAGES),
    "localai": Base("localai", LOCALAI_RUNTIME_PACKAGES),
    "localai-build": Base("localai-build", LOCALAI_BUILD_PACKAGES),
}

_MMDEBSTRAP_OPTIONS: Final = (
    "--variant=minbase",
    "--mode=root",
    "--format=tar",
    '--aptopt=APT::Install-Recommends "false"',
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)


@dataclass(frozen=True)
class Recipe:
    """How one image is built: a Containerfile, its context, and which bases fill which build args. `prepare`, when
    given, adds built files to a copy of the context before the build (LocalAI's binary and backend), and `pins`
    name what those are built from."""

    name: str
    containerfile: Path
    context: Path
    base_args: Mapping[str, str] = field(default_factory=dict)
    args: Mapping[str, str] = field(default_factory=dict)
    pins: tuple[str, ...] = ()
    prepare: Callable[[_Builder, Path], None] | None = None

    def inputs(self) -> list[str]:
        """What the key covers: the Containerfile, every file the context sends (after .dockerignore), the args."""
        parts = [self.name, _file_digest(self.containerfile)]
        parts += [f"{arg}={base}" for arg, base in sorted(self.base_args.items())]
        parts += [f"{arg}={value}" for arg, value in sorted(self.args.items())]
        parts += list(self.pins)
        parts += [f"{path} {digest}" for path, digest in context_files(self.context)]
        return parts


def repository_root() -> Path:
    root = Path(__file__).resolve().parents[3]
    if not (root / "Dockerfile").is_file() or not (root / "pyproject.toml").is_file():
        raise ImageError(
            f"the operator image builds from a checkout of the project (no Dockerfile in {root})"
        )
    return root


def _stage_localai(builder: _Builder, context: Path) -> None:
    base = BASES["localai-build"]

    def run_in_base(argv: Sequence[str], volumes: Mapping[Path, str]) -> None:
        builder.run_in_base(base, argv, volumes)

    try:
        localai.Build(builder.root / "localai", builder.env, run_in_base, base.key(builder.env)).stage(
            context
        )
    except localai.LocalAIBuildError as err:
        raise ImageError(str(err)) from err


def recipes() -> dict[str, Recipe]:
    packaged = Path(__file__).resolve().parent / "images"
    recipes = {
        "localai": Recipe(
            LOCALAI_IMAGE,
            packaged / "localai" / "Containerfile",
            packaged / "localai",
            {"LOCALAI_IMAGE": "localai", "LOCALAI_BUILD_IMAGE": "localai-build"},
            args={"LOCALAI_VERSION": localai.LOCALAI_VERSION},
            pins=localai.PINS,
            prepare=_stage_localai,
        ),
        "model-mirror": Recipe(
            MODEL_MIRROR_IMAGE,
            packaged / "model-mirror" / "Containerfile",
            packaged / "model-mirror",
            {"PYTHON_IMAGE": "python"},
        ),
    }
    try:
        root = repository_root()
    except ImageError:
        return recipes
    return {
        "operator": Recipe(OPERATOR_IMAGE, root / "Dockerfile", root, {"PYTHON_IMAGE": "python"}),
        **recipes,
    }


def images_dir(env: Mapping[str, str] = os.environ) -> Path:
    return cache_root(env) / "images"


def build(which: str, *, env: Mapping[str, str] = os.environ) -> Image:
    """The image `which` ("operator", "localai" or "model-mirror"), built unless an archive with the same key
    exists."""
    available = recipes()
    if which not in available:
        raise ImageError(f"unknown image {which!r}: choose from {', '.join(available)}")
    return _Builder(images_dir(env), env).image(available[which])


def build_all(*, env: Mapping[str, str] = os.environ) -> list[Image]:
    builder = _Builder(images_dir(env), env)
    return [builder.image(recipe) for recipe in recipes().values()]


def cached(which: str, *, env: Mapping[str, str] = os.environ) -> Image | None:
    """The image `which` if its archive for the current inputs exists, without building anything."""
    builder = _Builder(images_dir(env), env)
    image = builder.planned(recipes()[which])
    return image if image.archive.is_file() else None


@dataclass
class _Builder:
    root: Path
    env: Mapping[str, str]

    def planned(self, recipe: Recipe) -> Image:
        base_keys = {arg: BASES[base].key(self.env)[:12] for arg, base in recipe.base_args.items()}
        key = _digest([*recipe.inputs(), *(f"{arg}@{k}" for arg, k in sorted(base_keys.items()))])
        tag = f"dev-{key[:12]}"
        return Image(recipe.name, tag, self.root / "archives" / f"{recipe.name}-{tag}.oci.tar")

    def image(self, recipe: Recipe) -> Image:
        image = self.planned(recipe)
        if image.archive.is_file():
            _log(f"{image.ref}: cached ({image.archive})")
            return image
        self.root.mkdir(parents=True, exist_ok=True)
        with _lock(self.root / "build.lock"):
            if image.archive.is_file():
                return image
            self._check_tools()
            started = time.monotonic()
            args = {arg: self.base(BASES[base]) for arg, base in recipe.base_args.items()}
            with contextlib.ExitStack() as stack:
                context = recipe.context
                if recipe.prepare is not None:
                    (self.root / "tmp").mkdir(parents=True, exist_ok=True)
                    staged = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self.root / "tmp")))
                    context = staged / "context"
                    shutil.copytree(recipe.context, context)
                    recipe.prepare(self, context)
                _log(f"building {image.ref} from {recipe.containerfile} (buildah, chroot isolation)")
                self._build(recipe, image, {**args, **recipe.args}, context)
            self._export(image)
            self._forget_older(image)
            _log(f"{image.ref}: built in {time.monotonic() - started:.0f} s ({image.archive})")
        return image

    def base(self, base: Base) -> str:
        """The local reference of `base`'s image, made (mmdebstrap) and committed to the build storage if absent."""
        key = base.key(self.env)[:12]
        ref = f"localhost/localai-operator-base/{base.name}:{key}"
        if self._buildah(["inspect", "--type", "image", ref], check=False, quiet=True).returncode == 0:
            return ref
        tarball = self.root / "bases" / f"{base.name}-{key}.tar"
        if not tarball.is_file():
            tarball.parent.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_suffix(".partial")
            _log(
                f"making the Debian {SUITE} base {base.name!r} with mmdebstrap ({len(base.packages)} packages)"
            )
            mirror = [self.env[MIRROR_ENV]] if self.env.get(MIRROR_ENV) else []
            argv = [
                "mmdebstrap",
                *_MMDEBSTRAP_OPTIONS,
                f"--include={','.join(base.packages)}",
                SUITE,
                str(partial),
            ]
            started = time.monotonic()
            self._run([*argv, *mirror], what=f"mmdebstrap for the {base.name} base")
            partial.replace(tarball)
            _log(f"base {base.name!r} made in {time.monotonic() - started:.0f} s ({tarball})")
        container = self._buildah(["from", "scratch"], capture=True).stdout.strip()
        try:
            self._buildah(["add", container, str(tarball), "/"])
            self._buildah(
                [
                    "config",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env",
                    "LANG=C.UTF-8",
                    "--cmd",
                    "python3",
                    "--label",
                    f"io.localai-operator.base={base.name}",
                    container,
                ]
            )
            self._buildah(["commit", "--quiet", container, ref], quiet=True)
        finally:
            self._buildah(["rm", container], check=False, quiet=True)
        return ref

    def run_in_base(self, base: Base, argv: Sequence[str], volumes: Mapping[Path, str]) -> None:
        """Runs `argv` in a working container of `base` (chroot isolation) with host directories mounted."""
        container = self._buildah(
            ["from", "--pull=never", "--quiet", self.base(base)], capture=True
        ).stdout.strip()
        try:
            mounts = [arg for host, inside in volumes.items() for arg in ("-v", f"{host}:{inside}")]
            jobs = ["--env", f"JOBS={self.env.get('JOBS', '2')}"]
            self._buildah(
                ["run", "--isolation", "chroot", *jobs, *mounts, container, "--", *argv],
                what=f"`{' '.join(argv)}` in the {base.name} base",
            )
        finally:
            self._buildah(["rm", container], check=False, quiet=True)

    def _build(self, recipe: Recipe, image: Image, args: Mapping[str, str], context: Path) -> None:
        argv = [
            "build",
            "--isolation",
            "chroot",
            "--layers",
            "--pull=never",
            "-f",
            str(recipe.containerfile),
            "-t",
            image.local_ref,
        ]
        for name, value in sorted(args.items()):
            argv += ["--build-arg", f"{name}={value}"]
        ca = next((path for path in _ca_candidates(self.env) if Path(path).is_file()), None)
        if ca is not None:
            argv += ["-v", f"{ca}:{_IMAGE_CA_BUNDLE}:ro"]
        self._buildah([*argv, str(context)], what=f"the build of {image.ref}")

    def _export(self, image: Image) -> None:
        image.archive.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=image.archive.parent, prefix=".export-") as tmp:
            layout = Path(tmp) / "layout"
            self._buildah(["push", "--quiet", image.local_ref, f"oci:{layout}:{image.tag}"], quiet=True)
            write_oci_archive(layout, image.archive, image.containerd_ref, image.tag)

    def _forget_older(self, image: Image) -> None:
        for old in (self.root / "archives").glob(f"{image.name}-dev-*.oci.tar"):
            if old != image.archive:
                old.unlink(missing_ok=True)
                self._buildah(
                    ["rmi", f"localhost/{image.name}:{old.name.removeprefix(image.name + '-')[:-8]}"],
                    check=False,
                    quiet=True,
                )

    def _check_tools(self) -> None:
        missing = [
            tool
            for tool in ("buildah", "mmdebstrap")
            if shutil.which(tool, path=self.env.get("PATH")) is None
        ]
        if missing:
            raise ImageError(f"{' and '.join(missing)} not found: {_TOOLS_HINT}")
        if os.geteuid() != 0:
            raise ImageError(
                "building images needs root (mmdebstrap's root mode, buildah's chroot isolation)"
            )

    def buildah_argv(self) -> list[str]:
        storage = self.root / "storage"
        return [
            "buildah",
            "--root",
            str(storage / "root"),
            "--runroot",
            str(storage / "run"),
            "--storage-driver",
            "overlay",
        ]

    def _buildah(
        self,
        args: list[str],
        *,
        check: bool = True,
        quiet: bool = False,
        capture: bool = False,
        what: str = "",
    ) -> subprocess.CompletedProcess[str]:
        return self._run([*self.buildah_argv(), *args], check=check, quiet=quiet, capture=capture, what=what)

    def _run(
        self,
        argv: list[str],
        *,
        check: bool = True,
        quiet: bool = False,
        capture: bool = False,
        what: str = "",
    ) -> subprocess.CompletedProcess[str]:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        # buildah keeps RUN --mount=type=cache directories under $TMPDIR/buildah-cache: in the project's cache.
        env = {**self.env, "TMPDIR": str(tmp), "BUILDAH_FORMAT": "oci"}
        result = subprocess.run(
            argv,
            env=env,
            stdout=subprocess.PIPE if capture or quiet else sys.stderr,
            stderr=subprocess.PIPE if quiet else sys.stderr,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            detail = (
                f": {result.stderr.strip()[-2000:]}" if quiet and result.stderr else " (see its output above)"
            )
            raise ImageError(
                f"{what or argv[0] + ' ' + ' '.join(argv[1:3])} failed with exit code {result.returncode}{detail}"
            )
        return result


def buildah_argv(env: Mapping[str, str] = os.environ) -> list[str]:
    """`buildah` with the project's storage, for running built images (`buildah from`, `buildah run`)."""
    return _Builder(images_dir(env), env).buildah_argv()


class Container:
    """A built image's program run on this host with `buildah run` (chroot isolation: the host's network, so a
    server in it listens on the host's loopback). For tests and checks before a real node exists."""

    def __init__(
        self,
        image: Image,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        volumes: Mapping[Path, str] | None = None,
        log: Path,
        user: str | None = None,
    ) -> None:
        self.image, self.argv, self.log = image, list(argv), log
        self.env, self.volumes, self.user = dict(env or {}), dict(volumes or {}), user
        self.name = f"{image.name}-{os.getpid()}-{time.monotonic_ns()}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Container:
        buildah = buildah_argv()
        # LocalAI v4.9.0 opens a pidfd per check of its backend process and leaves it to Go's garbage collector:
        # ~1,000 within two idle minutes, and then buildah's default limit of 1,024 open files stalls its accept
        # loop for seconds until a GC closes them. All this process may give instead.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        source = self.image.local_ref
        if (
            subprocess.run([*buildah, "inspect", "--type", "image", source], capture_output=True).returncode
            != 0
        ):
            source = f"oci-archive:{self.image.archive}"
        subprocess.run(
            [
                *buildah,
                "from",
                "--pull=never",
                "--quiet",
                "--ulimit",
                f"nofile={nofile}:{nofile}",
                "--name",
                self.name,
                source,
            ],
            check=True,
            capture_output=True,
        )
        argv = [*buildah, "run", "--isolation", "chroot"]
        for key, value in self.env.items():
            argv += ["--env", f"{key}={value}"]
        for host, inside in self.volumes.items():
            argv += ["-v", f"{host}:{inside}"]
        if self.user is not None:
            argv += ["--user", self.user]
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [*argv, self.name, "--", *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        """The `buildah run` process's; the container's processes are below it."""
        assert self._process is not None, "not started"
        return self._process.pid

    def poll(self) -> int | None:
        assert self._process is not None, "not started"
        return self._process.poll()

    def wait(self, timeout: float) -> int:
        assert self._process is not None, "not started"
        return self._process.wait(timeout)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(10)
        subprocess.run([*buildah_argv(), "rm", self.name], capture_output=True, check=False)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def write_oci_archive(layout: Path, archive: Path, name: str, tag: str) -> None:
    """Tars an OCI layout into `archive`, naming its one manifest as containerd's own `ctr export` does.

    containerd names an imported image after `io.containerd.image.name` when present; a bare
    `org.opencontainers.image.ref.name` is only a tag, which `ctr images import` would prefix or drop.
    """
    index = json.loads((layout / "index.json").read_text())
    manifests = index.get("manifests", [])
    assert len(manifests) == 1, f"expected one manifest in {layout}, found {len(manifests)}"
    manifests[0]["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps(index, separators=(",", ":")))
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in ("oci-layout", "index.json"):
            tar.add(layout / member, arcname=member)
        for blob in sorted((layout / "blobs").rglob("*")):
            tar.add(blob, arcname=str(blob.relative_to(layout)), recursive=False)
    partial.replace(archive)


def context_files(context: Path) -> list[tuple[str, str]]:
    """(path, digest) of every file a build of `context` sends, after its `.dockerignore`, sorted by path."""
    patterns = _ignore_patterns(context)
    found: list[tuple[str, str]] = []
    for directory, dirs, files in os.walk(context):
        rel_dir = Path(directory).relative_to(context)
        dirs[:] = sorted(d for d in dirs if not _prunable((rel_dir / d).as_posix(), patterns))
        for name in files:
            rel = (rel_dir / name).as_posix()
            if _excluded(rel, patterns):
                continue
            path = Path(directory) / name
            if path.is_symlink():
                found.append((rel, "link:" + os.readlink(path)))
            else:
                mode = "x" if os.access(path, os.X_OK) else "-"
                found.append((rel, mode + _file_digest(path)))
    return sorted(found)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    negated: bool
    text: str


def _ignore_patterns(context: Path) -> list[_Pattern]:
    """`.dockerignore` (or `.containerignore`) as Docker reads it: later lines win, `!` re-includes, `**` spans."""
    for name in (".containerignore", ".dockerignore"):
        path = context / name
        if path.is_file():
            break
    else:
        return []
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        text = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        patterns.append(_Pattern(re.compile(_glob_regex(text)), negated, text))
    return patterns


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out) + r"\Z"


def _excluded(path: str, patterns: Sequence[_Pattern]) -> bool:
    # A pattern matching a parent directory matches everything under it (Docker's MatchesOrParentMatches).
    parents = [path]
    while "/" in parents[-1]:
        parents.append(parents[-1].rsplit("/", 1)[0])
    excluded = False
    for pattern in patterns:
        if any(pattern.regex.match(candidate) for candidate in parents):
            excluded = not pattern.negated
    return excluded


def _prunable(directory: str, patterns: Sequence[_Pattern]) -> bool:
    """Whether nothing under an excluded `directory` can be re-included by a later `!` pattern."""
    if not _excluded(directory, patterns):
        return False
    return not any(
        p.negated and (p.text.startswith(directory + "/") or re.search(r"[*?\[]", p.text.split("/")[0]))
        for p in patterns
    )


def _ca_candidates(env: Mapping[str, str]) -> list[str]:
    return [path for path in (env.get("PIP_CERT"), env.get("SSL_CERT_FILE"), *_HOST_CA_BUNDLES) if path]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log(message: str) -> None:
    print(f"{_LOG_PREFIX} {message}", file=sys.stderr, flush=True)


def clean(env: Mapping[str, str] = os.environ) -> None:
    """Removes the whole image cache (bases, archives, build storage, build caches): the next build is cold."""
    root = images_dir(env)
    if not root.exists():
        return
    builder = _Builder(root, env)
    if shutil.which("buildah", path=env.get("PATH")) is not None:
        builder._buildah(["rm", "--all"], check=False, quiet=True)
        builder._buildah(["rmi", "--all", "--force"], check=False, quiet=True)
    shutil.rmtree(root)
    _log(f"removed {root}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="images", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "which", nargs="?", default="all", choices=["all", "operator", "localai", "model-mirror"]
    )
    parser.add_argument("--clean", action="store_true", help="remove the image cache instead of building")
    args = parser.parse_args(argv)
    if args.clean:
        clean()
        return 0
    try:
        built = build_all() if args.which == "all" else [build(args.which)]
    except ImageError as err:
        _log(str(err))
        return 1
    for image in built:
        print(f"{image.ref} {image.archive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
