"""A loopback HTTP server for tests: serves files (sparse ones too) with `Range: bytes=a-b` as a model host does,
and records each request's Range and the bytes it sent, so a test can see a header read stayed a header read."""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_CHUNK = 256 * 1024


@dataclass
class FileServer:
    root: Path
    port: int = 0
    ranges: bool = True  # False: answer every GET with the whole file (a server that ignores Range)
    scheme: str = "http"
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    sent: dict[str, int] = field(default_factory=dict)  # path -> bytes of body sent

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}/{name}"


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            name = self.path.split("?", 1)[0].lstrip("/")
            wanted = self.headers.get("Range")
            server.requests.append((name, wanted))
            path = server.root / name
            if "/" in name or not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "") if server.ranges else None
            if match:
                start = int(match[1])
                end = min(int(match[2]) if match[2] else size - 1, size - 1)
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            left = end - start + 1
            try:
                with path.open("rb") as f:
                    f.seek(start)
                    while left > 0:
                        chunk = f.read(min(_CHUNK, left))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        server.sent[name] = server.sent.get(name, 0) + len(chunk)
                        left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client had what it needed

    return Handler


@contextmanager
def serve_files(
    root: Path, *, host: str = "127.0.0.1", ranges: bool = True, tls: ssl.SSLContext | None = None
) -> Iterator[FileServer]:
    """Serves the files of `root` (by name) on an ephemeral port of `host` until the block ends; over https with
    `tls`, a server context."""
    state = FileServer(root, ranges=ranges, scheme="http" if tls is None else "https")
    httpd = ThreadingHTTPServer((host, 0), _handler(state))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, name="file-server", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
