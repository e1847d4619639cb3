"""The in-cluster model mirror of the real node: GET and HEAD of the files of one directory over HTTP, with single
byte ranges (`Range: bytes=N-` or `bytes=N-M`) as fetch-models' resume needs, and `/healthz`. Python's standard
library only, so the image is the Debian python base plus the GGUF.

    mirror.py [--dir /srv/mirror] [--host 0.0.0.0] [--port 8080]
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Final

MIRROR_DIR: Final = Path("/srv/mirror")
_RANGE: Final = re.compile(r"bytes=(\d+)-(\d*)\Z")
_CHUNK: Final = 1 << 20


class Handler(BaseHTTPRequestHandler):
    directory: Path = MIRROR_DIR
    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        if self.path == "/healthz":
            self._short(HTTPStatus.OK, b"ok\n", body)
            return
        name = self.path.lstrip("/")
        path = self.directory / name
        if "/" in name or name.startswith(".") or not path.is_file():
            self._short(HTTPStatus.NOT_FOUND, b"not found\n", body)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        wanted = self.headers.get("Range")
        if wanted is not None:
            match = _RANGE.match(wanted.strip())
            if match is None or int(match.group(1)) >= size:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status is HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        with path.open("rb") as source:
            source.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = source.read(min(_CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def _short(self, status: HTTPStatus, text: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if body:
            self.wfile.write(text)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=MIRROR_DIR)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    Handler.directory = args.dir
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    files = sorted(p.name for p in args.dir.iterdir() if p.is_file())
    print(f"mirror serving {files} on {args.host}:{args.port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
