"""The operator's GGUF header reads: one bounded HTTP range read of the real Gemma 3 270M file (its header and a
hole as long as its tensors) from a loopback server, kept per source so that a source is read once."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localai_operator import fetch
from localai_operator.api.llmmodel import ModelSource
from localai_operator.control.gpufit import Header
from localai_operator.control.headers import (
    CONCURRENT,
    Headers,
    fetched_headers,
    opener,
    read_source,
    source_of,
    tls_context,
)
from localai_operator.control.queue import Key
from localai_operator.testing.file_server import FileServer, serve_files
from tests.unit.gguf_samples import GEMMA_FILE_SIZE, GEMMA_HEADER_BYTES, sparse_gemma
from tests.unit.router.conftest import tls_contexts


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    sparse_gemma(directory)
    (directory / "page.gguf").write_text("<!doctype html><title>Sign in</title>\n")
    return directory


@pytest.fixture
def origin(models_dir: Path) -> Iterator[FileServer]:
    with serve_files(models_dir) as server:
        yield server


def read(url: str) -> Header:
    return read_source(url, counter=itertools.count(1), reader=opener(tls_context()))


def test_the_header_of_a_real_gguf_is_read_with_one_range_request_and_not_the_whole_file(
    origin: FileServer,
) -> None:
    header = read(origin.url("gemma-header-only.gguf"))
    assert header.state == "Read" and header.gguf is not None
    g = header.gguf
    assert (g.architecture, g.layers, g.trained_context, g.file_size) == (
        "gemma3",
        18,
        32768,
        GEMMA_FILE_SIZE,
    )
    assert g.quantization == "Q4_K_M"
    assert origin.requests == [("gemma-header-only.gguf", "bytes=0-67108863")]
    # The reader stops after the header; the server had at most its socket buffers more to send.
    assert GEMMA_HEADER_BYTES <= origin.sent["gemma-header-only.gguf"] < GEMMA_FILE_SIZE // 4


def test_a_server_that_ignores_range_is_read_just_as_far(models_dir: Path) -> None:
    with serve_files(models_dir, ranges=False) as origin:
        header = read(origin.url("gemma-header-only.gguf"))
        assert header.state == "Read" and header.gguf is not None
        assert header.gguf.file_size == GEMMA_FILE_SIZE  # from Content-Length
        assert origin.sent["gemma-header-only.gguf"] < GEMMA_FILE_SIZE // 4


def test_a_file_that_is_no_gguf_is_said_so_without_its_bytes(origin: FileServer) -> None:
    header = read(origin.url("page.gguf"))
    assert header.state == "NotGGUF"
    assert header.problem is not None and "does not start with the GGUF magic" in header.problem
    assert "<!do" not in header.problem  # what a URL answers is not shown to whoever names it


def test_a_missing_file_or_a_closed_port_is_unreadable_not_an_error(origin: FileServer) -> None:
    missing = read(origin.url("nothing.gguf") + "?X-Amz-Signature=secret")
    assert missing.state == "Unreadable" and "HTTP 404" in (missing.problem or "")
    assert "secret" not in (missing.problem or "")  # query strings may carry signatures
    closed = read(origin.url("x.gguf").replace(str(origin.port), "1"))
    assert closed.state == "Unreadable" and closed.gguf is None


def test_a_gated_hugging_face_source_is_not_read() -> None:
    gated = ModelSource.model_validate(
        {"huggingFace": {"repo": "a/b", "file": "m.gguf", "tokenSecretRef": {"name": "hf", "key": "token"}}}
    )
    public = ModelSource.model_validate({"url": "https://example.org/m.gguf", "sha256": "A" * 64})
    assert source_of(gated) is None
    assert source_of(public) == ("https://example.org/m.gguf", "a" * 64)


def test_a_source_is_read_once_and_every_pass_that_asked_runs_again(origin: FileServer) -> None:
    async def scenario() -> tuple[list[set[Key]], Header | None, Header | None, int]:
        notified: list[set[Key]] = []
        headers = Headers(notified.append)
        source = (origin.url("gemma-header-only.gguf"), None)
        model, pool = Key("LLMModel", "ns", "gemma"), Key("InferencePool", "ns", "gpu")
        first = headers.get(source, model)
        assert headers.get(source, pool) is None  # still being read: no second read
        while not notified:
            await asyncio.sleep(0.01)
        again = headers.get(source, model)
        await headers.close()
        return notified, first, again, headers.reads

    notified, first, again, reads = asyncio.run(scenario())
    assert first is None and again is not None and again.state == "Read"
    assert reads == 1 and len(origin.requests) == 1
    assert notified == [{Key("LLMModel", "ns", "gemma"), Key("InferencePool", "ns", "gpu")}]


def test_every_https_read_of_a_headers_shares_its_one_tls_context(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = tls_contexts(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # the one CA the context trusts

    async def scenario(origin: FileServer) -> tuple[list[Header | None], int]:
        notified: list[set[Key]] = []
        headers = Headers(notified.append)
        sources = [
            (origin.url(name, host="localhost"), None) for name in ("gemma-header-only.gguf", "page.gguf")
        ]
        for i, source in enumerate(sources):
            headers.get(source, Key("LLMModel", "ns", f"m{i}"))
        deadline = time.monotonic() + 10
        while len(notified) < len(sources) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        results = [headers.get(source, Key("LLMModel", "ns", "again")) for source in sources]
        await headers.close()
        return results, headers.tls.session_stats()["connect"]

    with serve_files(models_dir, tls=server) as origin:
        results, connects = asyncio.run(scenario(origin))
    assert [r.state if r else None for r in results] == ["Read", "NotGGUF"]
    # Both connections were made with the Headers' context: none loaded the CA certificates again.
    assert connects == 2 and len(origin.requests) == 2


def test_a_failed_read_is_tried_again_after_a_while_keeping_its_result_meanwhile() -> None:
    now = [0.0]
    calls: list[str] = []

    def unreachable(url: str) -> Header:
        calls.append(url)
        return Header("Unreadable", len(calls), problem="no route to host")

    async def scenario() -> list[Header | None]:
        headers = Headers(lambda keys: None, read=unreachable, clock=lambda: now[0])
        key, source = Key("LLMModel", "ns", "m"), ("http://10.0.0.1/m.gguf", None)
        seen = [headers.get(source, key)]
        while not calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        seen.append(headers.get(source, key))  # known: not read again yet
        now[0] = 301.0
        seen.append(headers.get(source, key))  # read again in the background; the last result meanwhile
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        await headers.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] is None
    assert [h.serial for h in seen[1:] if h is not None] == [1, 1]
    assert len(calls) == 2


def test_how_long_a_read_has_been_asked_for_is_known_until_it_ends() -> None:
    now = [10.0]
    release = threading.Event()

    def slow(url: str) -> Header:
        release.wait(5)
        return Header("Unreadable", 1, problem="no route to host")

    async def scenario() -> list[float | None]:
        headers = Headers(lambda keys: None, read=slow, clock=lambda: now[0])
        key, source = Key("LLMModel", "ns", "m"), ("http://10.0.0.1/m.gguf", None)
        seen = [headers.reading_for(source)]
        headers.get(source, key)
        now[0] = 10.4
        seen.append(headers.reading_for(source))
        release.set()
        while headers.get(source, key) is None:
            await asyncio.sleep(0.01)
        seen.append(headers.reading_for(source))
        await headers.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] is None and seen[2] is None
    assert seen[1] == pytest.approx(0.4)


def test_after_a_server_could_not_be_reached_its_other_sources_are_unreadable_at_once_for_a_minute() -> None:
    now = [0.0]
    calls: list[str] = []

    def read(url: str) -> Header:
        calls.append(url)
        if "down.example" in url:
            problem = f"{url} could not be read: [Errno -2] Name or service not known"
            return Header("Unreadable", len(calls), problem=problem, unreachable=True)
        return Header("Unreadable", len(calls), problem=f"{url} answered HTTP 404")

    async def scenario() -> list[Header | None]:
        headers = Headers(lambda keys: None, read=read, clock=lambda: now[0])
        key = Key("LLMModel", "ns", "m")
        seen = [headers.get(("https://down.example/a.gguf", None), key)]
        while headers.reading_for(("https://down.example/a.gguf", None)) is not None:
            await asyncio.sleep(0.01)
        seen.append(headers.get(("https://down.example/b.gguf?sig=secret", None), key))  # not read
        seen.append(headers.get(("https://up.example/c.gguf", None), key))  # another server: read
        now[0] = 61.0
        seen.append(headers.get(("https://down.example/d.gguf", None), key))  # the minute is over: read
        seen.append(headers.get(("https://down.example/b.gguf?sig=secret", None), key))  # and this one again
        await headers.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] is None and seen[2] is None and seen[3] is None
    skipped = seen[1]
    assert skipped is not None and skipped.state == "Unreadable"
    assert skipped.problem == (
        "https://down.example/b.gguf could not be read: [Errno -2] Name or service not known"
    )
    assert seen[4] is skipped  # its result meanwhile, while it is read again
    assert not any("b.gguf" in url for url in calls[:3])


def test_reads_waiting_for_their_turn_when_their_server_could_not_be_reached_are_not_made() -> None:
    calls: list[str] = []

    def read(url: str) -> Header:
        calls.append(url)
        problem = f"{url} could not be read: [Errno -2] Name or service not known"
        return Header("Unreadable", len(calls), problem=problem, unreachable=True)

    async def scenario() -> tuple[list[set[Key]], list[Header | None], int]:
        notified: list[set[Key]] = []
        headers = Headers(notified.append, read=read)
        sources = [(f"https://down.example/{i}.gguf", None) for i in range(6)]
        for i, source in enumerate(sources):  # many models created at once
            assert headers.get(source, Key("LLMModel", "ns", f"m{i}")) is None
        while any(headers.reading_for(source) is not None for source in sources):
            await asyncio.sleep(0.01)
        seen = [headers.get(source, Key("LLMModel", "ns", "again")) for source in sources]
        await headers.close()
        return notified, seen, headers.reads

    notified, seen, reads = asyncio.run(scenario())
    # The first CONCURRENT reads were under way when the first failed; the others waited and are not made.
    assert reads == CONCURRENT and len(calls) == CONCURRENT
    assert [h.state if h else None for h in seen] == ["Unreadable"] * 6
    assert seen[5] is not None and seen[5].problem == (
        "https://down.example/5.gguf could not be read: [Errno -2] Name or service not known"
    )
    assert set().union(*notified) == {Key("LLMModel", "ns", f"m{i}") for i in range(6)}


def pod_with_report(message: str, exit_code: int = 0) -> dict[str, object]:
    terminated = {"exitCode": exit_code, "message": message}
    return {
        "status": {"initContainerStatuses": [{"name": "fetch-models", "state": {"terminated": terminated}}]}
    }


def test_fetch_models_reports_the_headers_it_downloaded_and_the_operator_reads_them_back(
    models_dir: Path,
) -> None:
    items = [
        fetch.Download("gemma", "gemma-header-only.gguf", "http://x/g.gguf", "A" * 64),
        fetch.Download("page", "page.gguf", "http://x/p.gguf"),  # no GGUF: left out
    ]
    report = fetch.header_report(items, models_dir)
    assert len(report) <= fetch.MAX_REPORT_BYTES
    entries = fetched_headers(pod_with_report(report))
    assert [(m, f, s) for m, f, s, _ in entries] == [("gemma", "gemma-header-only.gguf", "a" * 64)]
    assert entries[0][3].architecture == "gemma3" and entries[0][3].file_size == GEMMA_FILE_SIZE

    headers = Headers(lambda keys: None)
    assert headers.report("ns", entries) == {"gemma"}
    assert headers.report("ns", entries) == set()  # nothing new
    found = headers.fetched("ns", "gemma", "gemma-header-only.gguf", "a" * 64)
    assert found is not None and found.gguf == entries[0][3]
    assert headers.fetched("ns", "gemma", "other.gguf", "a" * 64) is None  # another file: not this report
    assert headers.fetched("other-ns", "gemma", "gemma-header-only.gguf", "a" * 64) is None


def test_the_report_stays_within_the_kubelets_4_kib_and_hostile_reports_are_dropped(models_dir: Path) -> None:
    items = [fetch.Download(f"m{i}", "gemma-header-only.gguf", "http://x/g.gguf") for i in range(20)]
    report = fetch.header_report(items, models_dir)
    assert len(report) <= fetch.MAX_REPORT_BYTES and 1 <= len(json.loads(report)["gguf"]) < 20
    assert fetched_headers(pod_with_report(report, exit_code=1)) == []
    assert fetched_headers(pod_with_report("not json")) == []
    assert (
        fetched_headers(pod_with_report('{"gguf": [{"model": "m", "file": "f", "gguf": {"layers": -1}}]}'))
        == []
    )
    assert fetched_headers(pod_with_report('{"gguf": 7}')) == []
    assert fetched_headers({"status": {}}) == []


def test_with_reading_off_no_source_is_read_and_reports_still_count() -> None:
    def never(url: str) -> Header:
        raise AssertionError(f"read {url}")

    headers = Headers(lambda keys: None, read=never, enabled=False)
    header = headers.get(("http://10.0.0.1/m.gguf", None), Key("LLMModel", "ns", "m"))
    assert (
        header is not None
        and header.state == "Unreadable"
        and "--no-read-model-headers" in (header.problem or "")
    )
