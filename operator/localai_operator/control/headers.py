"""The GGUF headers of the models' sources, read by the operator with one HTTP range read each, in the background.

A pass asks `Headers.get(source)`: the answer is the result when known, else None and a read starts (at most
CONCURRENT at once, each in a thread: the parse is CPU work of up to seconds on hostile input). When it ends, the
keys that asked are queued again. A result is kept per source (download URL and sha256), so a source is read once
per process, not every pass; a failed read is tried again after RETRY_SECONDS. After a read could not connect to
its server at all, the other sources on that server are Unreadable at once for UNREACHABLE_SECONDS, unread.

Where the operator cannot read a source, the pool's `fetch-models` init container reports the headers of the files
it downloaded in its termination message (fetch.header_report), which the operator sees on the pod while it is
Pending (`Headers.report`); a pass uses it for a model whose file and sha256 it names.

A read is bounded: it asks for the first MAX_HEADER_BYTES (`Range: bytes=0-...`), stops as soon as the header
is parsed, and gives up after DEADLINE_SECONDS in all (each socket read after TIMEOUT_SECONDS). A server that
ignores Range is read the same way, up to the same bound. Sources that need a token (a gated Hugging Face
repository) are not read: the operator keeps no Secret values.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.client import HTTPResponse
from typing import Any, Final

from pydantic import ValidationError

from localai_operator import __version__
from localai_operator.api.llmmodel import GGUFStatus, ModelSource
from localai_operator.control.gpufit import Header
from localai_operator.control.queue import Key
from localai_operator.gguf.facts import gguf_status
from localai_operator.gguf.header import MAX_HEADER_BYTES, GGUFError, NotGGUF, read_header

log = logging.getLogger(__name__)

CONCURRENT: Final = 2
TIMEOUT_SECONDS: Final = 10.0
DEADLINE_SECONDS: Final = 30.0
RETRY_SECONDS: Final = 300.0
# Results kept, the least recently used dropped first: above the 10,000 models of the scale benchmark, whose
# sources a bound of 1,024 made read again at every pass of their models (~0.6 KB each).
MAX_SOURCES: Final = 16384
# After a read could not connect to a server, the other sources on it are not tried for this long: their headers
# are Unreadable at once (a cluster that cannot reach huggingface.co waits for one timeout, not for one per model).
UNREACHABLE_SECONDS: Final = 60.0
MAX_HOSTS: Final = 1024

Source = tuple[str, str | None]  # (download URL, sha256)


def source_of(source: ModelSource) -> Source | None:
    """The key a model source's header is kept under; None for a source the operator does not read."""
    if source.hugging_face is not None and source.hugging_face.token_secret_ref is not None:
        return None
    return source.download_url(), (source.sha256 or "").lower() or None


class _Deadline:
    """A response body that refuses to be read past a deadline: a server trickling bytes cannot hold a thread."""

    def __init__(self, response: HTTPResponse, deadline: float) -> None:
        self.response = response
        self.deadline = deadline

    def read(self, size: int, /) -> bytes:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"no GGUF header within {DEADLINE_SECONDS:g} s")
        return self.response.read(size)


def opener(tls: ssl.SSLContext) -> urllib.request.OpenerDirector:
    """What reads sources: urlopen's handlers (proxies from the environment, redirects) with `tls` for every https
    connection. urlopen alone makes a context per connection, loading the CA certificates each time: 18 % of the
    operator's CPU at 1,000 models (py-spy)."""
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls))


def tls_context() -> ssl.SSLContext:
    """The one a Headers reads with: what http.client would make per connection (the system's CA certificates,
    or SSL_CERT_FILE's, read when it is made)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def read_source(url: str, *, counter: itertools.count[int], reader: urllib.request.OpenerDirector) -> Header:
    """One blocking range read of `url` with `reader` (an opener()) and the parse of its header (run it in a
    thread)."""
    request = urllib.request.Request(
        url,
        headers={"Range": f"bytes=0-{MAX_HEADER_BYTES - 1}", "User-Agent": f"localai-operator/{__version__}"},
    )
    where = _without_query(url)
    try:
        with reader.open(request, timeout=TIMEOUT_SECONDS) as response:
            size = _file_size(response)
            header = read_header(_Deadline(response, time.monotonic() + DEADLINE_SECONDS), file_size=size)
            status = gguf_status(header, file_size=size)
    except NotGGUF:
        # Not its first bytes: a URL's answer is no business of whoever may create an LLMModel.
        problem = f"{where} is no GGUF file (it does not start with the GGUF magic)"
        return Header("NotGGUF", next(counter), problem=problem, source=where)
    except GGUFError as err:
        return Header("NotGGUF", next(counter), problem=f"{where} is no GGUF model: {err}", source=where)
    except urllib.error.HTTPError as err:
        return Header("Unreadable", next(counter), problem=f"{where} answered HTTP {err.code}", source=where)
    except (OSError, ValueError) as err:  # URLError, timeouts, resets, a malformed answer
        reason = getattr(err, "reason", None) or err
        return Header(
            "Unreadable",
            next(counter),
            problem=f"{where} could not be read: {reason}",
            source=where,
            # No connection at all (a name that does not resolve, refused, no route): urlopen's URLError.
            unreachable=isinstance(err, urllib.error.URLError),
        )
    return Header("Read", next(counter), gguf=status, source=where)


def _file_size(response: HTTPResponse) -> int | None:
    """The whole file's size: Content-Range's total on a 206, Content-Length on a 200."""
    if response.status == 206:
        total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length") or ""
    return int(length) if length.isdigit() else None


def _server(url: str) -> str:
    """The scheme, host and port a URL connects to."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port or ''}"
    except ValueError:  # a port that is no number: that URL alone
        return url


def _without_query(url: str) -> str:
    """Query strings may carry signatures: never in a status or a log."""
    return url.split("?", 1)[0]


OFF = Header("Unreadable", 0, problem="the operator reads no sources (run --no-read-model-headers)")
FETCH_CONTAINER = "fetch-models"
MAX_REPORTED = 32


def fetched_headers(pod: Mapping[str, Any]) -> list[tuple[str, str, str | None, GGUFStatus]]:
    """(model, file, sha256, status.gguf) from the termination message of a pod's finished fetch-models container
    (at most 4 KiB, the kubelet's bound; hostile: every entry is validated, invalid ones are dropped)."""
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if status.get("name") != FETCH_CONTAINER:
            continue
        terminated = (status.get("state") or {}).get("terminated") or {}
        message = terminated.get("message")
        if terminated.get("exitCode") != 0 or not isinstance(message, str) or len(message) > 4096:
            return []
        try:
            entries = json.loads(message).get("gguf")
        except (ValueError, AttributeError):
            return []
        found = []
        for entry in entries[:MAX_REPORTED] if isinstance(entries, list) else []:
            try:
                model, file, sha = entry["model"], entry["file"], entry.get("sha256")
                if not (isinstance(model, str) and isinstance(file, str) and isinstance(sha, str | None)):
                    continue
                found.append(
                    (model, file, sha.lower() if sha else None, GGUFStatus.model_validate(entry["gguf"]))
                )
            except (KeyError, TypeError, AttributeError, ValidationError):
                continue
        return found
    return []


class Headers:
    def __init__(
        self,
        notify: Callable[[set[Key]], None],
        *,
        read: Callable[[str], Header] | None = None,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self._notify = notify
        self._enabled = enabled  # False: no source is read; only fetch-models reports count
        self._counter = itertools.count(1)
        self.tls = tls_context()  # every https read's, made once
        reader = opener(self.tls)
        self._read = read or (lambda url: read_source(url, counter=self._counter, reader=reader))
        self._clock = clock
        self._known: OrderedDict[Source, tuple[Header, float]] = OrderedDict()
        self._reading: dict[Source, set[Key]] = {}
        self._asked: dict[Source, float] = {}  # when each read in progress was first asked for
        self._unreachable: dict[str, tuple[float, str]] = {}  # server -> when and why no connection was made
        # (namespace, model) -> (file, sha256, header) as a pool's fetch-models reported it
        self._fetched: OrderedDict[tuple[str, str], tuple[str, str | None, Header]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(CONCURRENT)
        self.reads = 0  # range reads started, for tests and metrics

    def get(self, source: Source, asker: Key) -> Header | None:
        """The header of `source`, or None while it is being read (then `asker` is queued when it is)."""
        if not self._enabled:
            return OFF
        known = self._known.get(source)
        if known is not None:
            header, at = known
            if header.state != "Unreadable" or self._clock() - at < RETRY_SECONDS:
                self._known.move_to_end(source)
                return header
        if source in self._reading:
            self._reading[source].add(asker)
            return None
        skipped = self._skip(source)
        if skipped is not None:
            return skipped
        if known is not None:
            # A failed read is tried again, but the pass keeps its result meanwhile (pools do not wait on it again).
            self._start(source, {asker})
            return known[0]
        self._start(source, {asker})
        return None

    def reading_for(self, source: Source) -> float | None:
        """Seconds since the read of `source` in progress was asked for; None when it is not being read."""
        asked = self._asked.get(source)
        return None if asked is None else self._clock() - asked

    def _start(self, source: Source, askers: set[Key]) -> None:
        self._reading[source] = askers
        self._asked[source] = self._clock()
        task = asyncio.get_running_loop().create_task(self._run(source), name=f"gguf-header {source[0][:80]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, source: Source) -> None:
        async with self._slots:
            # Its server could not be reached while this read waited for its turn (1,000 models asked at once):
            # Unreadable as get() would have said, unread.
            if self._skip(source) is None:
                self.reads += 1
                self._done(source, await self._read_now(source))
        self._asked.pop(source, None)
        self._notify(self._reading.pop(source, set()))

    async def _read_now(self, source: Source) -> Header:
        try:
            return await asyncio.to_thread(self._read, source[0])
        except Exception as err:  # a bug in the reader: said once, the source tried again later
            log.exception("reading the GGUF header of %s failed", _without_query(source[0]))
            return Header("Unreadable", next(self._counter), problem=f"reading failed: {type(err).__name__}")

    def _done(self, source: Source, header: Header) -> None:
        if header.state == "Unreadable":
            log.info("GGUF header of %s: %s", _without_query(source[0]), header.problem)
        server = _server(source[0])
        if header.unreachable:
            self._unreachable.pop(server, None)
            self._unreachable[server] = (self._clock(), header.problem or "")
            while len(self._unreachable) > MAX_HOSTS:
                del self._unreachable[next(iter(self._unreachable))]
        else:
            self._unreachable.pop(server, None)
        self._keep(source, header)

    def _keep(self, source: Source, header: Header, at: float | None = None) -> None:
        self._known[source] = (header, self._clock() if at is None else at)
        self._known.move_to_end(source)
        while len(self._known) > MAX_SOURCES:
            self._known.popitem(last=False)

    def _skip(self, source: Source) -> Header | None:
        """_skipped's header, kept until the server's window ends (a pass that asks then has it read), not for
        RETRY_SECONDS."""
        skipped = self._skipped(source)
        if skipped is None:
            return None
        self._keep(source, skipped[0], at=skipped[1] + UNREACHABLE_SECONDS - RETRY_SECONDS)
        return skipped[0]

    def _skipped(self, source: Source) -> tuple[Header, float] | None:
        """Unreadable without a read, if a read from the same server could not connect a moment ago (and when)."""
        server = _server(source[0])
        failed = self._unreachable.get(server)
        if failed is None:
            return None
        at, problem = failed
        if self._clock() - at >= UNREACHABLE_SECONDS:
            del self._unreachable[server]
            return None
        where = _without_query(source[0])
        reason = problem.rpartition(" could not be read: ")[2] or problem
        # Said as a read of this very source would have said it: a later read that fails the same way changes
        # no status.
        problem = f"{where} could not be read: {reason}"
        return Header("Unreadable", next(self._counter), problem=problem, source=where, unreachable=True), at

    def report(self, namespace: str, entries: list[tuple[str, str, str | None, GGUFStatus]]) -> set[str]:
        """Keeps what a fetch-models container reported; returns the models whose header is new."""
        changed = set()
        for model, file, sha, gguf in entries:
            known = self._fetched.get((namespace, model))
            if known is not None and known[:2] == (file, sha) and known[2].gguf == gguf:
                continue
            header = Header("Read", next(self._counter), gguf=gguf, source="the fetch-models report")
            self._fetched[(namespace, model)] = (file, sha, header)
            self._fetched.move_to_end((namespace, model))
            changed.add(model)
        while len(self._fetched) > MAX_SOURCES:
            self._fetched.popitem(last=False)
        return changed

    def fetched(self, namespace: str, model: str, file: str, sha256: str | None) -> Header | None:
        """The header a fetch-models container reported for this model's current file (and sha256), if any."""
        known = self._fetched.get((namespace, model))
        if known is None or known[:2] != (file, sha256):
            return None
        return known[2]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
