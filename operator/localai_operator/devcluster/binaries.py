"""Finds, or builds from pinned Go modules, the binaries the harness runs, cached per version: the control plane
(etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok), the real node's (kubelet,
kube-proxy, containerd, the CNI plugins, CoreDNS and the pause binary) and the OCI registry the release test pushes
the chart to (the CNCF distribution registry).

`python -m localai_operator.devcluster [--node | --registry] [--print-dir]` is the one build command
(`hack/cluster-binaries.sh`, `make cluster-binaries`, `make node-binaries` and `make registry` call it), so an
installed package can build without the repository.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

K8S_VERSION: Final = "v1.34.4"
KWOK_VERSION: Final = "v0.7.0"
ETCD_VERSION: Final = "v3.6.16"
CONTAINERD_VERSION: Final = "v2.4.2"
CNI_PLUGINS_VERSION: Final = "v1.10.0"
COREDNS_VERSION: Final = "v1.15.0"
# The CNCF distribution registry (the `registry` of `helm push` and `helm install oci://` in the release test).
REGISTRY_VERSION: Final = "v3.1.2"
# The tag of Kubernetes' build/pause/Makefile at K8S_VERSION: the pause binary is built from that source.
PAUSE_VERSION: Final = "3.10.1"

KUBERNETES_COMMANDS: Final = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
NAMES: Final = ("etcd", *KUBERNETES_COMMANDS, "kwok")

NODE_KUBERNETES_COMMANDS: Final = ("kubelet", "kube-proxy")
CONTAINERD_COMMANDS: Final = ("containerd", "containerd-shim-runc-v2", "ctr")
CNI_PLUGINS: Final = {
    "bridge": "plugins/main/bridge",
    "host-local": "plugins/ipam/host-local",
    "loopback": "plugins/main/loopback",
    "portmap": "plugins/meta/portmap",
}
NODE_NAMES: Final = (*NODE_KUBERNETES_COMMANDS, *CONTAINERD_COMMANDS, "coredns", "pause")
CNI_DIR: Final = "cni"
# CoreDNS built with only what cluster DNS needs: no `forward` plugin exists in the binary, so it cannot send a
# query out of the machine whatever its Corefile says. Order matters: it is the plugin chain's order upstream.
COREDNS_PLUGINS: Final = ("bind", "ready", "health", "errors", "cache", "template", "kubernetes")

# The registry built with only the storage drivers a loopback registry uses: its cmd/registry links the Azure, GCS
# and S3 SDKs too (the way CoreDNS is trimmed above, a main package of our own).
REGISTRY_MODULE: Final = "github.com/distribution/distribution/v3"
REGISTRY_PACKAGES: Final = (
    "registry",
    "registry/storage/driver/filesystem",
    "registry/storage/driver/inmemory",
)
REGISTRY_NAME: Final = "registry"

_LOG_PREFIX = "[cluster-binaries]"


class BinariesError(RuntimeError):
    """The binaries are neither found nor buildable; the message says what to install or set."""


@dataclass(frozen=True)
class Versions:
    """The pinned versions; the environment variables of the same names override them (e.g. to try a new one)."""

    kubernetes: str = K8S_VERSION
    kwok: str = KWOK_VERSION
    etcd: str = ETCD_VERSION

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Versions:
        return cls(
            kubernetes=env.get("K8S_VERSION", K8S_VERSION),
            kwok=env.get("KWOK_VERSION", KWOK_VERSION),
            etcd=env.get("ETCD_VERSION", ETCD_VERSION),
        )

    @property
    def directory_name(self) -> str:
        return f"k8s-{self.kubernetes}-kwok-{self.kwok}-etcd-{self.etcd}"


@dataclass(frozen=True)
class NodeVersions:
    """The real node's pinned versions, overridable like `Versions` (K8S_VERSION, CONTAINERD_VERSION, ...)."""

    kubernetes: str = K8S_VERSION
    containerd: str = CONTAINERD_VERSION
    cni_plugins: str = CNI_PLUGINS_VERSION
    coredns: str = COREDNS_VERSION

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> NodeVersions:
        return cls(
            kubernetes=env.get("K8S_VERSION", K8S_VERSION),
            containerd=env.get("CONTAINERD_VERSION", CONTAINERD_VERSION),
            cni_plugins=env.get("CNI_PLUGINS_VERSION", CNI_PLUGINS_VERSION),
            coredns=env.get("COREDNS_VERSION", COREDNS_VERSION),
        )

    @property
    def directory_name(self) -> str:
        return (
            f"node-k8s-{self.kubernetes}-containerd-{self.containerd}-cni-{self.cni_plugins}"
            f"-coredns-{self.coredns}"
        )


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the six executables (they may come from different directories)."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path

    @classmethod
    def from_paths(cls, paths: Mapping[str, Path]) -> Binaries:
        return cls(**{name.replace("-", "_"): paths[name] for name in NAMES})

    def as_dict(self) -> dict[str, str]:
        return {name: str(getattr(self, name.replace("-", "_"))) for name in NAMES}


@dataclass(frozen=True)
class NodeBinaries:
    """Absolute paths of the real node's executables; `cni_dir` holds the CNI plugins (bridge, host-local, ...)."""

    directory: Path
    kubelet: Path
    kube_proxy: Path
    containerd: Path
    containerd_shim_runc_v2: Path
    ctr: Path
    coredns: Path
    pause: Path
    cni_dir: Path

    @classmethod
    def in_directory(cls, directory: Path) -> NodeBinaries:
        paths = {name.replace("-", "_"): directory / name for name in NODE_NAMES}
        return cls(directory=directory, cni_dir=directory / CNI_DIR, **paths)


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    if root := env.get("LOCALAI_OPERATOR_CACHE"):
        return Path(root)
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "localai-operator"


def cache_dir(versions: Versions | None = None, env: Mapping[str, str] = os.environ) -> Path:
    return cache_root(env) / "bin" / (versions or Versions.from_env(env)).directory_name


def node_cache_dir(versions: NodeVersions | None = None, env: Mapping[str, str] = os.environ) -> Path:
    return cache_root(env) / "bin" / (versions or NodeVersions.from_env(env)).directory_name


def registry_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    return cache_root(env) / "bin" / f"registry-{env.get('REGISTRY_VERSION', REGISTRY_VERSION)}"


def find(*, build: bool = True, env: Mapping[str, str] = os.environ) -> Binaries:
    """Each binary from `KUBEBUILDER_ASSETS`, then `PATH` (if its `--version` matches), then the cache.

    Whatever is still missing is built into the cache when `build` is true (about 10 minutes on 2 cores, once).
    """
    versions = Versions.from_env(env)
    cached = cache_dir(versions, env)
    found: dict[str, Path] = {}
    for name in NAMES:
        path = _find_installed(name, versions, env) or _executable(cached / name)
        if path is not None:
            found[name] = path
    missing = [name for name in NAMES if name not in found]
    if missing and build:
        build_all(versions, env=env)
        found.update({name: cached / name for name in missing})
    elif missing:
        raise BinariesError(
            f"missing {', '.join(missing)} for Kubernetes {versions.kubernetes}, kwok {versions.kwok}, "
            f"etcd {versions.etcd}: run `make cluster-binaries`, or set KUBEBUILDER_ASSETS to a directory holding them"
        )
    return Binaries.from_paths(found)


def find_node(*, build: bool = True, env: Mapping[str, str] = os.environ) -> NodeBinaries:
    """The real node's binaries from the cache, built into it first when missing and `build` is true."""
    versions = NodeVersions.from_env(env)
    directory = node_cache_dir(versions, env)
    if _missing_node_binaries(directory):
        if not build:
            raise BinariesError(
                f"missing the real node's binaries ({', '.join(_missing_node_binaries(directory))}) for "
                f"Kubernetes {versions.kubernetes}, containerd {versions.containerd}, CNI plugins "
                f"{versions.cni_plugins}, CoreDNS {versions.coredns}: run `make node-binaries`"
            )
        build_node(versions, env=env)
    return NodeBinaries.in_directory(directory.resolve())


def find_registry(*, build: bool = True, env: Mapping[str, str] = os.environ) -> Path:
    """The registry binary from the cache, built into it first when missing and `build` is true (once: 2.6 CPU
    minutes with empty Go caches, 330 MB of modules downloaded)."""
    path = registry_cache_dir(env) / REGISTRY_NAME
    if _executable(path) is None:
        if not build:
            raise BinariesError(
                f"missing the OCI registry (distribution {env.get('REGISTRY_VERSION', REGISTRY_VERSION)}): "
                "run `make registry`"
            )
        build_registry(env=env)
    return path.resolve()


def _missing_node_binaries(directory: Path) -> list[str]:
    wanted = [*NODE_NAMES, *(f"{CNI_DIR}/{plugin}" for plugin in CNI_PLUGINS)]
    return [name for name in wanted if _executable(directory / name) is None]


def _find_installed(name: str, versions: Versions, env: Mapping[str, str]) -> Path | None:
    candidates: list[Path] = []
    if assets := env.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(assets) / name)
    if on_path := shutil.which(name, path=env.get("PATH")):
        candidates.append(Path(on_path))
    for candidate in candidates:
        path = _executable(candidate)
        if path is not None and version_matches(name, path, versions):
            return path
    return None


def _executable(path: Path) -> Path | None:
    return path.resolve() if path.is_file() and os.access(path, os.X_OK) else None


def reported_version(name: str, path: Path) -> str | None:
    """The version a binary prints, normalised to `vX.Y.Z`, or None when it prints none we recognise."""
    argv = [str(path), "version", "--client"] if name == "kubectl" else [str(path), "--version"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"v?(\d+\.\d+\.\d+)", out)
    return f"v{match.group(1)}" if match else None


def version_matches(name: str, path: Path, versions: Versions) -> bool:
    found = reported_version(name, path)
    if found is None:
        return False
    if name == "etcd":
        # The apiserver supports etcd 3.5 and 3.6 alike, and envtest's KUBEBUILDER_ASSETS ships either.
        return re.fullmatch(r"v3\.[56]\.\d+", found) is not None
    wanted = versions.kwok if name == "kwok" else versions.kubernetes
    return found == wanted


def build_all(versions: Versions | None = None, *, env: Mapping[str, str] = os.environ) -> Path:
    """Builds whatever is missing from the cache directory and returns it; a lock serialises concurrent builds."""
    versions = versions or Versions.from_env(env)
    root = cache_root(env)
    bin_dir = cache_dir(versions, env)
    work = root / "build"
    bin_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    with _lock(root / "build.lock"):
        missing = [name for name in NAMES if _executable(bin_dir / name) is None]
        if not missing:
            _log(f"cached in {bin_dir}")
            return bin_dir
        go = shutil.which("go", path=env.get("PATH"))
        if go is None:
            raise BinariesError("Go is required to build the control plane (or set KUBEBUILDER_ASSETS)")
        builder = _Builder(go, go_env(env), versions, bin_dir, work, jobs=env.get("JOBS", "2"))
        if any(name in missing for name in KUBERNETES_COMMANDS):
            builder.kubernetes([name for name in KUBERNETES_COMMANDS if name in missing])
        if "kwok" in missing:
            builder.kwok()
        if "etcd" in missing:
            builder.etcd()
    _log(f"ready in {bin_dir}")
    return bin_dir


def build_node(versions: NodeVersions | None = None, *, env: Mapping[str, str] = os.environ) -> Path:
    """Builds whatever the real node lacks into its cache directory (under the same lock as `build_all`)."""
    versions = versions or NodeVersions.from_env(env)
    root = cache_root(env)
    bin_dir = node_cache_dir(versions, env)
    work = root / "build"
    (bin_dir / CNI_DIR).mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    with _lock(root / "build.lock"):
        missing = _missing_node_binaries(bin_dir)
        if not missing:
            _log(f"cached in {bin_dir}")
            return bin_dir
        go = shutil.which("go", path=env.get("PATH"))
        if go is None:
            raise BinariesError("Go is required to build the real node's binaries")
        builder = _Builder(
            go,
            go_env(env),
            Versions(kubernetes=versions.kubernetes),
            bin_dir,
            work,
            jobs=env.get("JOBS", "2"),
        )
        if wanted := [cmd for cmd in NODE_KUBERNETES_COMMANDS if cmd in missing]:
            builder.kubernetes(wanted)
        if any(cmd in missing for cmd in CONTAINERD_COMMANDS):
            builder.containerd(versions.containerd)
        if any(f"{CNI_DIR}/{plugin}" in missing for plugin in CNI_PLUGINS):
            builder.cni_plugins(versions.cni_plugins)
        if "coredns" in missing:
            builder.coredns(versions.coredns)
        if "pause" in missing:
            builder.pause(env)
    _log(f"ready in {bin_dir}")
    return bin_dir


def build_registry(*, env: Mapping[str, str] = os.environ) -> Path:
    """Builds the registry into its cache directory unless it is there (under the same lock as `build_all`)."""
    root = cache_root(env)
    bin_dir = registry_cache_dir(env)
    work = root / "build"
    bin_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    with _lock(root / "build.lock"):
        if _executable(bin_dir / REGISTRY_NAME) is not None:
            _log(f"cached in {bin_dir}")
            return bin_dir
        go = shutil.which("go", path=env.get("PATH"))
        if go is None:
            raise BinariesError("Go is required to build the OCI registry")
        builder = _Builder(go, go_env(env), Versions(), bin_dir, work, jobs=env.get("JOBS", "2"))
        builder.registry(env.get("REGISTRY_VERSION", REGISTRY_VERSION))
    _log(f"ready in {bin_dir}")
    return bin_dir


def go_env(env: Mapping[str, str]) -> dict[str, str]:
    return {
        **env,
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        "GOFLAGS": "-buildvcs=false",
        "GONOSUMDB": env.get("GONOSUMDB", "k8s.io,sigs.k8s.io,go.etcd.io"),
    }


@dataclass(frozen=True)
class _Builder:
    go: str
    env: Mapping[str, str]
    versions: Versions
    bin_dir: Path
    work: Path
    jobs: str

    def kubernetes(self, commands: Sequence[str]) -> None:
        # k8s.io/kubernetes requires its staging modules at v0.0.0 with local replaces, so `go install` refuses
        # it: a wrapper module replaces each with its published v0.X.Y twin.
        version = self.versions.kubernetes
        module_dir = self.work / f"k8s-{version}"
        module_dir.mkdir(parents=True, exist_ok=True)
        _log(f"downloading k8s.io/kubernetes@{version} (first time: several minutes)")
        info = self._go(
            ["mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
            module_dir,
            extra_env={"GOFLAGS": "-mod=mod"},
            capture=True,
        )
        upstream_mod = Path(json.loads(info)["GoMod"]).read_text()
        (module_dir / "go.mod").write_text(wrapper_go_mod(upstream_mod, version))
        (module_dir / "go.sum").write_text("")
        self._go(["get", *(f"k8s.io/kubernetes/cmd/{cmd}@{version}" for cmd in commands)], module_dir)
        for cmd in commands:
            _log(f"building {cmd} {version} (a few minutes each on 2 cores)")
            self._build(
                module_dir,
                f"k8s.io/kubernetes/cmd/{cmd}",
                cmd,
                [
                    "-tags",
                    "selinux,notest",
                    "-ldflags",
                    f"-s -w -buildid= {kubernetes_version_ldflags(version)}",
                ],
            )

    def kwok(self) -> None:
        version = self.versions.kwok
        _log(f"building kwok {version}")
        gobin = self.work / "gobin"
        self._go(
            ["install", "-trimpath", "-ldflags", "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{version}"],
            self.work,
            extra_env={"GOBIN": str(gobin)},
        )
        shutil.move(gobin / "kwok", self.bin_dir / "kwok")

    def etcd(self) -> None:
        # go.etcd.io/etcd/server/v3 is itself package main; a wrapper module pins it.
        version = self.versions.etcd
        _log(f"building etcd {version}")
        module_dir = self.work / f"etcd-{version}"
        module_dir.mkdir(parents=True, exist_ok=True)
        (module_dir / "go.mod").write_text("module local/etcdbuild\n\ngo 1.24\n")
        (module_dir / "go.sum").write_text("")
        self._go(["get", f"go.etcd.io/etcd/server/v3@{version}"], module_dir)
        self._build(module_dir, "go.etcd.io/etcd/server/v3", "etcd", ["-ldflags", "-s -w"])

    def containerd(self, version: str) -> None:
        # The tags drop the snapshotters that need cgo or are unused here (btrfs, devmapper, zfs) and tracing.
        module = "github.com/containerd/containerd/v2"
        module_dir = self._wrapper(
            "containerd", version, [f"{module}/cmd/{cmd}@{version}" for cmd in CONTAINERD_COMMANDS]
        )
        tags = "urfave_cli_no_docs no_btrfs no_devmapper no_zfs no_tracing"
        stamp = f"-X {module}/version.Version={version} -X {module}/version.Revision={version}"
        for cmd in CONTAINERD_COMMANDS:
            _log(f"building {cmd} {version}")
            cmd_tags = f"{tags} no_grpc" if cmd == "containerd-shim-runc-v2" else tags
            self._build(
                module_dir, f"{module}/cmd/{cmd}", cmd, ["-tags", cmd_tags, "-ldflags", f"-s -w {stamp}"]
            )

    def cni_plugins(self, version: str) -> None:
        module = "github.com/containernetworking/plugins"
        module_dir = self._wrapper(
            "cni-plugins", version, [f"{module}/{path}@{version}" for path in CNI_PLUGINS.values()]
        )
        stamp = f"-X {module}/pkg/utils/buildversion.BuildVersion={version}"
        for plugin, path in CNI_PLUGINS.items():
            _log(f"building the CNI plugin {plugin} {version}")
            self._build(module_dir, f"{module}/{path}", f"{CNI_DIR}/{plugin}", ["-ldflags", f"-s -w {stamp}"])

    def coredns(self, version: str) -> None:
        # A main package of our own that links only COREDNS_PLUGINS, the way CoreDNS documents trimmed builds.
        module = "github.com/coredns/coredns"
        packages = ["core/dnsserver", "coremain", *(f"plugin/{plugin}" for plugin in COREDNS_PLUGINS)]
        module_dir = self._wrapper(
            "coredns", version, [f"{module}/{package}@{version}" for package in packages]
        )
        (module_dir / "main.go").write_text(coredns_main(module))
        _log(f"building coredns {version} with the plugins {', '.join(COREDNS_PLUGINS)}")
        self._build(
            module_dir, ".", "coredns", ["-ldflags", f"-s -w -X {module}/coremain.GitCommit={version}"]
        )

    def registry(self, version: str) -> None:
        module = REGISTRY_MODULE
        module_dir = self._wrapper(
            "distribution", version, [f"{module}/{package}@{version}" for package in REGISTRY_PACKAGES]
        )
        (module_dir / "main.go").write_text(registry_main(module))
        _log(f"building the distribution registry {version} (filesystem and inmemory storage only)")
        self._build(
            module_dir, ".", REGISTRY_NAME, ["-ldflags", f"-s -w -X {module}/version.version={version}"]
        )

    def pause(self, env: Mapping[str, str]) -> None:
        # Kubernetes' own pause.c, from the k8s.io/kubernetes module already downloaded for the kubelet.
        cc = shutil.which("cc", path=env.get("PATH")) or shutil.which("gcc", path=env.get("PATH"))
        if cc is None:
            raise BinariesError(
                "a C compiler is needed to build the pause binary: run `make node-packages` as root"
            )
        version = self.versions.kubernetes
        info = self._go(["mod", "download", "-json", f"k8s.io/kubernetes@{version}"], self.work, capture=True)
        source = Path(json.loads(info)["Dir"]) / "build" / "pause" / "linux" / "pause.c"
        partial = self.bin_dir / "pause.tmp"
        _log(f"building pause {PAUSE_VERSION} from {source}")
        result = subprocess.run(
            [
                cc,
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                f"-DVERSION=v{PAUSE_VERSION}-{version}",
                "-o",
                str(partial),
                str(source),
            ],
            stdout=sys.stderr,
            check=False,
        )
        if result.returncode != 0:
            raise BinariesError(
                "compiling pause.c failed (a static libc is needed: run `make node-packages` as root)"
            )
        partial.replace(self.bin_dir / "pause")

    def _wrapper(self, name: str, version: str, packages: list[str]) -> Path:
        """A module that requires the packages' module at `version`: `go build` of a package then works."""
        module_dir = self.work / f"{name}-{version}"
        module_dir.mkdir(parents=True, exist_ok=True)
        (module_dir / "go.mod").write_text(f"module local/{name.replace('-', '')}build\n\ngo 1.24\n")
        (module_dir / "go.sum").write_text("")
        _log(f"downloading {packages[0].split('@')[0]}@{version} and its dependencies")
        self._go(["get", *packages], module_dir)
        return module_dir

    def _build(self, module_dir: Path, package: str, name: str, flags: list[str]) -> None:
        partial = self.bin_dir / f"{name}.tmp"
        self._go(["build", "-p", self.jobs, "-trimpath", *flags, "-o", str(partial), package], module_dir)
        # Renamed only when complete, so an interrupted build never leaves a binary the cache lookup trusts.
        partial.replace(self.bin_dir / name)

    def _go(
        self, args: list[str], cwd: Path, *, extra_env: Mapping[str, str] | None = None, capture: bool = False
    ) -> str:
        result = subprocess.run(
            [self.go, *args],
            cwd=cwd,
            env={**self.env, **(extra_env or {})},
            stdout=subprocess.PIPE if capture else sys.stderr,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BinariesError(
                f"`go {' '.join(args)}` failed with exit code {result.returncode} (see its output)"
            )
        return result.stdout if capture else ""


def wrapper_go_mod(upstream_go_mod: str, version: str) -> str:
    """go.mod of a module that can build k8s.io/kubernetes commands at `version` (a `v1.Y.Z` tag)."""
    staging = "v0." + version.removeprefix("v1.")
    lines = ["module local/k8sbuild", ""]
    lines += [line for line in upstream_go_mod.splitlines() if re.match(r"(go|godebug) ", line)]
    lines += ["", f"require k8s.io/kubernetes {version}", ""]
    for module in re.findall(r"^\s+(k8s\.io/[a-z0-9-]+) v0\.0\.0\s*$", upstream_go_mod, re.MULTILINE):
        lines.append(f"replace {module} => {module} {staging}")
    return "\n".join(lines) + "\n"


def coredns_main(module: str) -> str:
    """main.go of a CoreDNS with only COREDNS_PLUGINS, registered in the order of the upstream plugin chain."""
    imports = "\n".join(f'\t_ "{module}/plugin/{plugin}"' for plugin in COREDNS_PLUGINS)
    directives = ", ".join(f'"{plugin}"' for plugin in COREDNS_PLUGINS)
    return (
        "package main\n\nimport (\n"
        f'\t"{module}/core/dnsserver"\n\t"{module}/coremain"\n{imports}\n)\n\n'
        f"func init() {{ dnsserver.Directives = []string{{{directives}}} }}\n\n"
        "func main() { coremain.Run() }\n"
    )


def registry_main(module: str) -> str:
    """main.go of a distribution registry with only the REGISTRY_PACKAGES storage drivers (its cmd/registry's
    main, minus the cloud drivers, auth and pull-through proxy)."""
    drivers = "\n".join(f'\t_ "{module}/{package}"' for package in REGISTRY_PACKAGES[1:])
    return (
        f'package main\n\nimport (\n\t"{module}/registry"\n{drivers}\n)\n\n'
        "func main() { _ = registry.RootCmd.Execute() }\n"
    )


def kubernetes_version_ldflags(version: str) -> str:
    # Unstamped builds report v0.0.0-master, which breaks helm's kubeVersion checks and kubectl's skew warning.
    minor = version.removeprefix("v1.").split(".")[0]
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor=1",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster-binaries", description=__doc__)
    parser.add_argument("--print-dir", action="store_true", help="print the cache directory and exit")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--node", action="store_true", help="the real node's binaries (kubelet, containerd, ...) instead"
    )
    which.add_argument(
        "--registry", action="store_true", help="the OCI registry (CNCF distribution) the release test uses"
    )
    args = parser.parse_args(argv)
    if args.print_dir:
        print(node_cache_dir() if args.node else registry_cache_dir() if args.registry else cache_dir())
        return 0
    try:
        print(build_node() if args.node else build_registry() if args.registry else build_all())
    except BinariesError as err:
        _log(str(err))
        return 1
    return 0
