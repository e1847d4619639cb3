"""Builds LocalAI itself from pinned sources for the `localai` image (images.py): the `local-ai` binary with its web
UI, and the llama-cpp gRPC backend for CPU (AVX2) as a LocalAI backend directory.

Where the sources come from is one variable, `LOCALAI_OPERATOR_LOCALAI_SOURCE`:
- a directory holding the source archives (default: `localai-src/` in the `shared/` directory beside the checkout,
  where this project's CI finds them): LocalAI's tag as a git archive, the `cogito` and `nib` modules the Go module
  proxy refuses (wired with `go mod edit -replace`) and a patch that cuts `nib` out of `local-ai chat` (v4.9.0 needs
  a newer cogito than exists there; the serving path does not use it). Every archive is checked against its pinned
  sha256 before use;
- `git`: the tag from LocalAI's git repository (its commit checked), the Go modules from the proxy as upstream pins
  them, and llama.cpp at the commit LocalAI's backend Makefile pins (not run here: this machine reaches no git host).

llama.cpp comes from the `llama-cpp-python` sdist on PyPI (its `vendor/llama.cpp`, one day older than LocalAI's pin;
LocalAI's patches apply and `grpc-server.cpp` compiles unchanged). Each step keeps its result in the image cache
(`<cache>/images/localai/`) under a key of its inputs, so only a changed input redoes a step: the extracted and
prepared sources, the web UI, the `local-ai` binary (with Go's own build and module caches), CMake's build
directory of the backend (kept, so an interrupted build goes on where it stopped) and the backend directory.
Steps run on the host (Go, Node.js and npm, as the control-plane build needs Go) except the Go gRPC stubs and the
C++ build, which run in the Debian build base (`buildah run`) so the backend links the same Debian libraries it
carries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LOCALAI_VERSION: Final = "v4.9.0"
LOCALAI_COMMIT: Final = "f7ad3f70eb5d8a0ddf80e08557f0d7df28cf032e"
SOURCE_ENV: Final = "LOCALAI_OPERATOR_LOCALAI_SOURCE"
GIT_SOURCE: Final = "git"
LOCALAI_REPOSITORY: Final = "https://github.com/mudler/LocalAI"
LLAMA_CPP_REPOSITORY: Final = "https://github.com/ggml-org/llama.cpp"
# The archives of the source directory, with their sha256 (as in its SHA256SUMS).
LOCALAI_ARCHIVE: Final = f"LocalAI-{LOCALAI_VERSION}.tar.gz"
ARCHIVES: Final = {
    LOCALAI_ARCHIVE: "b8b3a5ff2de8b2b3ad35c3c6cc2b4461a65c7c8373b5cc4f59c4e6162533647c",
    "cogito-bf4010d.tar.gz": "e4f1111e563b4eaf8a2292d65e8ceb3ccb4e1b0d013623c9f41066f18af4e11e",
    "nib-v0.6.0.tar.gz": "e900f97f2469d18bd30bbe516717df6f182e3eeb0e8a1d13eaaffc2c5b31632d",
}
NIB_PATCH: Final = (
    "chat-without-nib.patch",
    "6c776106fc990864cb21c632d9b7396194381762630f2dac516001dacc6cdb80",
)
# Module path -> the directory of its archive, for `go mod edit -replace`.
REPLACED_MODULES: Final = {"github.com/mudler/cogito": "cogito", "github.com/mudler/nib": "nib"}
LLAMA_CPP_SDIST: Final = ("llama-cpp-python", "0.3.35")
LLAMA_CPP_SDIST_SHA256: Final = "1139dbb54509074b70893fab8554e3b079aa9f4d312058ce4018ef0019e3de12"
PROTOC_GEN_GO: Final = "google.golang.org/protobuf/cmd/protoc-gen-go@v1.34.2"
# LocalAI's Makefile pins a bare commit of protoc-gen-go-grpc, which the module proxy refuses; v1.5.1 generates the
# same API.
PROTOC_GEN_GO_GRPC: Final = "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1"
GO_LDFLAGS: Final = (
    "-s -w -buildid= "
    f"-X github.com/mudler/LocalAI/internal.Version={LOCALAI_VERSION} "
    f"-X github.com/mudler/LocalAI/internal.Commit={LOCALAI_COMMIT}"
)
# Everything above that decides what is built: part of the image's key.
PINS: Final = (
    LOCALAI_VERSION,
    LOCALAI_COMMIT,
    *(f"{name} {digest}" for name, digest in sorted(ARCHIVES.items())),
    *NIB_PATCH,
    *LLAMA_CPP_SDIST,
    LLAMA_CPP_SDIST_SHA256,
    PROTOC_GEN_GO,
    PROTOC_GEN_GO_GRPC,
    GO_LDFLAGS,
)
_LOG_PREFIX: Final = "[images/localai]"


class LocalAIBuildError(RuntimeError):
    """A step of the LocalAI build failed or cannot run; the message says which and what to do."""


def recipe_dir() -> Path:
    return Path(__file__).resolve().parent / "images" / "localai"


def source_setting(env: Mapping[str, str] = os.environ) -> str:
    """The value of the source variable: `git`, or the directory of the archives (its default if it exists)."""
    value = env.get(SOURCE_ENV, "").strip()
    if value:
        return value
    checkout = Path(__file__).resolve().parents[3]
    return str(checkout.parent / "shared" / "localai-src")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _key(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _log(message: str) -> None:
    print(f"{_LOG_PREFIX} {message}", file=sys.stderr, flush=True)


@dataclass
class Build:
    """One build of LocalAI's pieces into `root` (the `localai/` directory of the image cache). `run_in_base(argv,
    volumes)` runs a command in the Debian build base with host directories mounted (images.py gives it)."""

    root: Path
    env: Mapping[str, str]
    run_in_base: Callable[[Sequence[str], Mapping[Path, str]], None]
    # The key of the build base's packages: the backend is rebuilt when they change.
    base_key: str

    def __post_init__(self) -> None:
        self.source = source_setting(self.env)
        self.git = self.source == GIT_SOURCE
        self.root.mkdir(parents=True, exist_ok=True)
        self.source_key = _key([*PINS, GIT_SOURCE if self.git else "archives"])
        recipe = [_sha256(path) for path in sorted(recipe_dir().iterdir()) if path.is_file()]
        self.backend_key = _key([self.source_key, self.base_key, *recipe])
        self.src_root = self.root / f"src-{self.source_key}"
        self.tree = self.src_root / f"LocalAI-{LOCALAI_VERSION}"
        self.out = self.root / f"local-ai-{self.source_key}"
        self.backend = self.root / f"backend-{self.backend_key}"

    # ------------------------------------------------------------------ the steps

    def stage(self, context: Path) -> None:
        """Builds what is missing and copies the image's files into the build context `context`."""
        started = time.monotonic()
        need_go = not (self.out / "local-ai").is_file()
        need_backend = not (self.backend / "llama-cpp" / "run.sh").is_file()
        if need_go or need_backend:
            self._step("sources", self._sources)
        if need_go:
            self._step("web UI (npm ci, vite build)", self._web_ui)
            self._step("Go gRPC stubs (protoc in the build base)", self._protos)
            self._step("local-ai (go build)", self._local_ai)
        if need_backend:
            self._step("llama-cpp backend (cmake + ninja in the build base)", self._backend)
        # The sources (about 1 GB extracted) are needed again only when an input changes.
        shutil.rmtree(self.src_root, ignore_errors=True)
        shutil.copy2(self.out / "local-ai", context / "local-ai")
        shutil.copy2(self.out / "entrypoint.sh", context / "entrypoint.sh")
        shutil.copytree(self.backend / "llama-cpp", context / "llama-cpp", symlinks=True)
        for pattern, keep in (
            ("src-*", self.src_root),
            ("local-ai-*", self.out),
            ("backend-*", self.backend),
        ):
            for old in self.root.glob(pattern):
                if old != keep:
                    shutil.rmtree(old, ignore_errors=True)
        _log(f"LocalAI {LOCALAI_VERSION} staged in {time.monotonic() - started:.0f} s")

    def _step(self, what: str, action: Callable[[], bool]) -> None:
        started = time.monotonic()
        if action():
            _log(f"{what}: {time.monotonic() - started:.0f} s")
        else:
            _log(f"{what}: cached")

    def _stamp(self, name: str) -> Path:
        return self.src_root / f".done-{name}"

    def _sources(self) -> bool:
        if self._stamp("sources").exists():
            return False
        shutil.rmtree(self.src_root, ignore_errors=True)
        self.src_root.mkdir(parents=True)
        if self.git:
            self._git_sources()
        else:
            self._archive_sources()
        self._stamp("sources").touch()
        return True

    def _archive_sources(self) -> None:
        directory = Path(self.source)
        if not directory.is_dir():
            raise LocalAIBuildError(
                f"LocalAI's source archives are not in {directory}: set {SOURCE_ENV} to the directory holding "
                f"{', '.join(ARCHIVES)} and {NIB_PATCH[0]}, or to `{GIT_SOURCE}` to clone the tag"
            )
        for name, digest in (*ARCHIVES.items(), NIB_PATCH):
            path = directory / name
            if not path.is_file():
                raise LocalAIBuildError(f"{path} is missing ({SOURCE_ENV}={directory})")
            if _sha256(path) != digest:
                raise LocalAIBuildError(f"{path}: sha256 differs from the pinned {digest}")
        for name in ARCHIVES:
            with tarfile.open(directory / name) as archive:
                archive.extractall(self.src_root, filter="tar")
        self._run(["patch", "-p1", "-i", str(directory / NIB_PATCH[0])], self.tree)
        replaces = [f"-replace={module}=../{folder}" for module, folder in REPLACED_MODULES.items()]
        self._run(["go", "mod", "edit", *replaces], self.tree)
        self._llama_cpp_from_sdist()

    def _git_sources(self) -> None:
        self._run(
            [
                "git",
                "clone",
                "--quiet",
                "--depth=1",
                f"--branch={LOCALAI_VERSION}",
                LOCALAI_REPOSITORY,
                str(self.tree),
            ],
            self.src_root,
        )
        commit = self._run(["git", "rev-parse", "HEAD"], self.tree, capture=True).strip()
        if commit != LOCALAI_COMMIT:
            raise LocalAIBuildError(
                f"LocalAI's tag {LOCALAI_VERSION} is commit {commit}, not the pinned {LOCALAI_COMMIT}"
            )
        makefile = (self.tree / "backend" / "cpp" / "llama-cpp" / "Makefile").read_text()
        pinned = next(
            line.split("=", 1)[1].strip()
            for line in makefile.splitlines()
            if line.startswith("LLAMA_VERSION?=")
        )
        llama = self.tree / "backend" / "cpp" / "llama-cpp" / "llama.cpp"
        llama.mkdir()
        for argv in (
            ["git", "init", "--quiet"],
            ["git", "fetch", "--quiet", "--depth=1", LLAMA_CPP_REPOSITORY, pinned],
            ["git", "checkout", "--quiet", "FETCH_HEAD"],
        ):
            self._run(argv, llama)

    def _llama_cpp_from_sdist(self) -> None:
        downloads = self.root / "downloads"
        downloads.mkdir(exist_ok=True)
        name, version = LLAMA_CPP_SDIST
        sdist = downloads / f"{name.replace('-', '_')}-{version}.tar.gz"
        if not sdist.is_file() or _sha256(sdist) != LLAMA_CPP_SDIST_SHA256:
            self._run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--no-binary=:all:",
                    "--dest",
                    str(downloads),
                    f"{name}=={version}",
                ],
                downloads,
            )
        if _sha256(sdist) != LLAMA_CPP_SDIST_SHA256:
            raise LocalAIBuildError(f"{sdist}: sha256 differs from the pinned {LLAMA_CPP_SDIST_SHA256}")
        prefix = f"{name.replace('-', '_')}-{version}/vendor/llama.cpp/"
        target = self.tree / "backend" / "cpp" / "llama-cpp" / "llama.cpp"
        with tarfile.open(sdist) as archive:
            members = []
            for member in archive.getmembers():
                if member.name.startswith(prefix) and member.name != prefix:
                    member.name = member.name.removeprefix(prefix)
                    members.append(member)
            archive.extractall(target, members=members, filter="tar")

    def _web_ui(self) -> bool:
        if self._stamp("ui").exists():
            return False
        npm = shutil.which("npm", path=self.env.get("PATH"))
        if npm is None:
            raise LocalAIBuildError("npm (Node.js 20 or newer) is needed to build LocalAI's web UI")
        ui = self.tree / "core" / "http" / "react-ui"
        self._run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], ui)
        self._run([npm, "run", "build"], ui, quiet=True)
        shutil.rmtree(ui / "node_modules")
        self._stamp("ui").touch()
        return True

    def _go_env(self) -> dict[str, str]:
        return {
            **self.env,
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
            "GOFLAGS": "-mod=mod -buildvcs=false",
        }

    def _protos(self) -> bool:
        if self._stamp("protos").exists():
            return False
        tools = self.root / "tools"
        tools.mkdir(exist_ok=True)
        for module in (PROTOC_GEN_GO, PROTOC_GEN_GO_GRPC):
            binary = module.split("@")[0].rsplit("/", 1)[1]
            if not (tools / f"{binary}-{module.rsplit('@', 1)[1]}").is_file():
                self._run(["go", "install", module], self.src_root, extra={"GOBIN": str(tools)})
                (tools / binary).rename(tools / f"{binary}-{module.rsplit('@', 1)[1]}")
        shim = self.src_root / "protoc-tools"
        shim.mkdir(exist_ok=True)
        for module in (PROTOC_GEN_GO, PROTOC_GEN_GO_GRPC):
            binary = module.split("@")[0].rsplit("/", 1)[1]
            shutil.copy2(tools / f"{binary}-{module.rsplit('@', 1)[1]}", shim / binary)
        self.run_in_base(
            ["bash", "/recipe/build.sh", "protos"],
            {self.tree: "/src", recipe_dir(): "/recipe", shim: "/tools"},
        )
        self._stamp("protos").touch()
        return True

    def _local_ai(self) -> bool:
        binary = self.out / "local-ai"
        if binary.is_file():
            return False
        self.out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.tree / "entrypoint.sh", self.out / "entrypoint.sh")
        partial = self.out / "local-ai.partial"
        jobs = self.env.get("JOBS", "2")
        self._run(
            [
                "go",
                "build",
                "-p",
                jobs,
                "-trimpath",
                "-ldflags",
                GO_LDFLAGS,
                "-o",
                str(partial),
                "./cmd/local-ai",
            ],
            self.tree,
        )
        partial.rename(binary)
        return True

    def _backend(self) -> bool:
        backend = self.backend / "llama-cpp"
        if (backend / "run.sh").is_file():
            return False
        cmake_dir = self.root / f"cmake-{self.backend_key}"
        cmake_dir.mkdir(parents=True, exist_ok=True)
        staging = self.backend / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        self.run_in_base(
            ["bash", "/recipe/build.sh", "backend"],
            {self.tree: "/src", recipe_dir(): "/recipe", cmake_dir: "/build", staging: "/out"},
        )
        (staging / "llama-cpp").rename(backend)
        staging.rmdir()
        shutil.rmtree(cmake_dir)
        for old in self.root.glob("cmake-*"):
            if old != cmake_dir:
                shutil.rmtree(old, ignore_errors=True)
        return True

    # ------------------------------------------------------------------ helpers

    def _run(
        self,
        argv: Sequence[str],
        cwd: Path,
        *,
        extra: Mapping[str, str] | None = None,
        capture: bool = False,
        quiet: bool = False,
    ) -> str:
        env = {**self._go_env(), **(extra or {})}
        result = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE if capture or quiet else sys.stderr,
            stderr=subprocess.PIPE if quiet else sys.stderr,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            detail = (
                f": {result.stderr.strip()[-2000:]}" if quiet and result.stderr else " (see its output above)"
            )
            raise LocalAIBuildError(
                f"`{' '.join(argv[:3])}` in {cwd} failed with exit code {result.returncode}{detail}"
            )
        return result.stdout if capture else ""
