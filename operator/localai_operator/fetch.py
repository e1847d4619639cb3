"""`localai-operator fetch-models`: the init container that downloads and verifies every model of a pool.

Streams to a `.partial` file, resumes it with HTTP Range, verifies sha256, then renames atomically, so a crashed
download never leaves a file that looks complete. The models directory ends up holding only what the pool serves:
LocalAI serves every `*.yaml` it finds there, so files of models the pool no longer names are removed first.
It runs in the operator's image: the standard library, and the package's own GGUF header reader for the report it
leaves in its termination message (what each model's header says, for an operator that cannot read the source
itself: a gated repository, a host only the nodes reach).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
# The kubelet keeps at most 4096 bytes of a container's termination message.
TERMINATION_LOG = "/dev/termination-log"
MAX_REPORT_BYTES = 4096
ATTEMPTS = 5
# fetch-models' own bookkeeping inside the models directory. A directory: LocalAI lists no directory as a model and
# reads configs only from top-level files (pkg/model/loader.go ListFilesInModelPath, core/config/model_config_loader.go
# LoadModelConfigsFromPath at v4.9.0), and the cleanup below removes top-level files only.
STATE_DIR = ".localai-operator"


class FetchError(Exception):
    """A failure the user can act on; the message names the model."""


@dataclass(frozen=True)
class Download:
    model: str
    file: str
    url: str
    sha256: str | None = None
    token_env: str | None = None
    size_bytes: int | None = None  # the exact size declared (source.sizeBytes)
    max_bytes: int | None = None  # the most it may take: declared, and at most the model volume

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Download:
        return cls(
            entry["model"],
            entry["file"],
            entry["url"],
            entry.get("sha256"),
            entry.get("tokenEnv"),
            entry.get("sizeBytes"),
            entry.get("maxBytes"),
        )

    def check_size(self, size: int, *, final: bool) -> None:
        """A FetchError if `size` bytes break the declared bounds (`final`: the whole file, which must then have
        exactly sizeBytes)."""
        if self.max_bytes is not None and size > self.max_bytes:
            raise FetchError(
                f"model {self.model}: {self.file} is larger than {self.max_bytes} bytes (source.maxBytes or "
                "sizeBytes, or the model volume); raise the bound or fix the source"
            )
        if self.size_bytes is not None and (size > self.size_bytes or (final and size != self.size_bytes)):
            raise FetchError(
                f"model {self.model}: {self.file} has {size} bytes, not the {self.size_bytes} of "
                "source.sizeBytes; fix sizeBytes or the source"
            )

    @property
    def config(self) -> str:
        """The model's LocalAI YAML, as the pool's ConfigMap names it."""
        return f"{self.model}.yaml"


def _hash_file(path: Path, digest: Any = None) -> Any:
    digest = digest or hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest


def _marker(path: Path) -> Path:
    return path.parent / STATE_DIR / "verified" / f"{path.name}.sha256"


def _legacy_marker(path: Path) -> Path:
    """Where earlier builds kept the marker: a dotfile that LocalAI's /v1/models lists as a model."""
    return path.with_name(f".{path.name}.verified")


def _partial(models_dir: Path, file: str) -> Path:
    return models_dir / f".{file}.partial"


def _write_marker(target: Path, sha: str) -> None:
    marker = _marker(target)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(_stamp(target, sha))


def _stamp(path: Path, sha: str) -> str:
    st = path.stat()
    return f"{sha} {st.st_size} {st.st_mtime_ns}"


def already_present(item: Download, target: Path) -> bool:
    if not target.exists() and not target.is_symlink():
        return False
    if target.is_symlink() or not target.is_file():
        raise FetchError(f"model {item.model}: {item.file} in the models directory is not a regular file")
    size = target.stat().st_size
    if item.size_bytes is not None and size != item.size_bytes:
        print(
            f"model {item.model}: {target.name} has {size} bytes, not {item.size_bytes}; downloading again",
            flush=True,
        )
        target.unlink()
        return False
    if item.sha256 is None:
        return True
    marker = _marker(target)
    # Hashing 4 GB on every restart costs a minute: trust a marker written after the last verification.
    if marker.exists() and marker.read_text() == _stamp(target, item.sha256):
        return True
    if _hash_file(target).hexdigest() == item.sha256:
        _write_marker(target, item.sha256)
        return True
    print(
        f"model {item.model}: {target.name} is present but its sha256 differs; downloading again", flush=True
    )
    target.unlink()
    return False


def _request(item: Download, offset: int) -> urllib.request.Request:
    request = urllib.request.Request(item.url, headers={"User-Agent": "localai-operator-fetch"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    token = os.environ.get(item.token_env) if item.token_env else None
    if token:
        # Not copied onto redirects: the CDN a hub redirects to gets a signed URL, never the token.
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    return request


def _download_once(item: Download, partial: Path) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    try:
        response = urllib.request.urlopen(_request(item, offset), timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return  # the partial file already holds every byte
        raise
    with response:
        resumed = offset if response.status == 206 else 0
        mode = "ab" if resumed else "wb"
        expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit():
            item.check_size(resumed + int(expected), final=True)
        received = 0
        with partial.open(mode) as out:
            while chunk := response.read(CHUNK):
                item.check_size(resumed + received + len(chunk), final=False)
                out.write(chunk)
                received += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    # http.client returns b"" instead of raising when the connection closes early: check the length ourselves.
    if expected is not None and received < int(expected):
        raise ConnectionError(f"connection closed after {received} of {expected} bytes")


def fetch(item: Download, models_dir: Path) -> str:
    """Make `models_dir/item.file` present and verified; returns what was done."""
    target = models_dir / item.file
    if already_present(item, target):
        return "present"
    partial = _partial(models_dir, item.file)
    last_error: Exception | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _download_once(item, partial)
            break
        except FetchError:
            partial.unlink(missing_ok=True)  # larger than allowed: nothing of it is worth resuming
            raise
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500 and err.code not in (408, 429):
                hint = " (is the token Secret set?)" if err.code in (401, 403) else ""
                raise FetchError(
                    f"model {item.model}: GET {item.url} returned HTTP {err.code}{hint}"
                ) from err
            last_error = err
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as err:
            last_error = err
        print(f"model {item.model}: attempt {attempt} failed ({last_error}); resuming", flush=True)
        time.sleep(min(30, 2**attempt))
    else:
        raise FetchError(f"model {item.model}: download failed after {ATTEMPTS} attempts: {last_error}")
    try:
        item.check_size(partial.stat().st_size, final=True)
    except FetchError:
        partial.unlink()
        raise
    if item.sha256 is not None:
        actual = _hash_file(partial).hexdigest()
        if actual != item.sha256:
            partial.unlink()
            raise FetchError(
                f"model {item.model}: checksum mismatch for {item.file}: expected sha256 {item.sha256}, got {actual}."
                " Fix spec.source.sha256 or the source URL."
            )
    os.replace(partial, target)
    if item.sha256 is not None:
        _write_marker(target, item.sha256)
    return "downloaded"


def remove_stale(models_dir: Path, items: list[Download]) -> list[str]:
    """Delete every top-level file of `models_dir` the pool does not serve: YAMLs of removed models (LocalAI would
    keep serving them), their weights, old markers, stray partials. Directories are left alone (lost+found, the
    backends LocalAI keeps on the model volume, this module's STATE_DIR), and so are markers of kept files."""
    keep = (
        {i.file for i in items}
        | {i.config for i in items}
        | {_partial(models_dir, i.file).name for i in items}
    )
    removed = []
    for path in sorted(models_dir.iterdir()):
        if path.name not in keep and (path.is_symlink() or not path.is_dir()):
            path.unlink()
            removed.append(path.name)
    markers = models_dir / STATE_DIR / "verified"
    if markers.is_dir():
        kept_markers = {_marker(models_dir / i.file).name for i in items}
        for path in sorted(markers.iterdir()):
            if path.name not in kept_markers:
                path.unlink()
    return removed


def prepare_state(models_dir: Path, items: list[Download]) -> None:
    """STATE_DIR and the backends directory LocalAI keeps on a model volume, writable by the pod's group (a
    non-root LocalAI installs backends there), and markers of earlier builds moved into STATE_DIR."""
    for directory in (models_dir / STATE_DIR, models_dir / STATE_DIR / "backends"):
        directory.mkdir(exist_ok=True)
        if directory.stat().st_uid == os.getuid():
            directory.chmod(0o2775)
    for item in items:
        legacy, marker = _legacy_marker(models_dir / item.file), _marker(models_dir / item.file)
        if legacy.exists() and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            os.replace(legacy, marker)


def install_configs(config_dir: Path, models_dir: Path, items: list[Download]) -> None:
    """Copy the YAML of every model in the manifest next to the model files, atomically. Only those: the ConfigMap
    holds other files (the manifest, the backend gallery) that LocalAI must not read as model configs."""
    for name in sorted({i.config for i in items}):
        tmp = models_dir / f".{name}.tmp"
        shutil.copyfile(config_dir / name, tmp)
        os.replace(tmp, models_dir / name)


def header_report(items: list[Download], models_dir: Path) -> str:
    """The termination message: {"gguf": [{"model", "file", "sha256", "gguf": status.gguf}, ...]}, the models in
    manifest order as long as the whole stays within MAX_REPORT_BYTES; a file whose header is no model's is left
    out (an mmproj, a file LocalAI will refuse anyway)."""
    from localai_operator.gguf.facts import gguf_status
    from localai_operator.gguf.header import GGUFError, read_header

    entries: list[dict[str, Any]] = []
    size = len(json.dumps({"gguf": []}, separators=(",", ":")))
    for item in items:
        path = models_dir / item.file
        try:
            with path.open("rb") as f:
                status = gguf_status(
                    read_header(f, file_size=path.stat().st_size), file_size=path.stat().st_size
                )
        except (OSError, GGUFError):
            continue
        entry = {
            "model": item.model,
            "file": item.file,
            "sha256": item.sha256,
            "gguf": status.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        }
        cost = len(json.dumps(entry, separators=(",", ":"))) + 1
        if size + cost > MAX_REPORT_BYTES:
            break
        entries.append(entry)
        size += cost
    return json.dumps({"gguf": entries}, separators=(",", ":"))


def write_report(items: list[Download], models_dir: Path, report: str | None) -> None:
    """The header report where the kubelet reads it; a report that cannot be made is no failure of the pod."""
    if report is None:
        return
    try:
        text = header_report(items, models_dir)
        Path(report).write_text(text)
    except Exception as err:  # the models are in place: LocalAI serves them with or without the report
        print(f"no header report: {_reason(err)}", flush=True)


def main(manifest: str, config_dir: str, models_dir: str, report: str | None = TERMINATION_LOG) -> int:
    """Every failure ends in one line on stderr naming the model (or the step that is no model's), exit code 1;
    never a traceback."""
    out = Path(models_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        items = [Download.from_json(e) for e in json.loads(Path(manifest).read_text())]
        prepare_state(out, items)
        # Stale files first: the space they free may be what the new downloads need.
        for name in remove_stale(out, items):
            print(f"removed {name}: no model of the pool uses it", flush=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return _failed(f"the models directory {models_dir} or the manifest {manifest}: {_reason(err)}")
    done: set[str] = set()
    for item in items:
        if item.file in done:  # several models may share one file from one source
            continue
        try:
            print(f"model {item.model}: {fetch(item, out)} {item.file}", flush=True)
        except FetchError as err:
            return _failed(str(err))
        except Exception as err:  # a full disk, a read-only volume: still one line naming the model
            return _failed(f"model {item.model}: {item.file}: {_reason(err)}")
        done.add(item.file)
    try:
        install_configs(Path(config_dir), out, items)
    except OSError as err:
        return _failed(f"installing the models' configurations: {_reason(err)}")
    # The kubelet mounts the file in the container; elsewhere (a test, a shell) there is nothing to write to.
    write_report(items, out, report if report and Path(report).is_file() else None)
    return 0


def _reason(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _failed(message: str) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return 1
