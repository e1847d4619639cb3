"""Keep secrets out of logs: a logging filter that masks known key values and any `Bearer` token.

It works at the handler, so it covers every logger that propagates there (aiohttp's included),
formatted arguments, exception tracebacks and stack info alike.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final

MASK: Final = "[REDACTED]"
_BEARER: Final = re.compile(r"(?i)(bearer\s+)[^\s'\",;]+")
# Shorter values would mask ordinary words; real API keys are far longer.
_MIN_SECRET_LENGTH: Final = 6


class RedactingFilter(logging.Filter):
    """Rewrites each record in place with secrets masked; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Replace the values to mask (the key can change when the config is reloaded)."""
        self._secrets = tuple(
            sorted({s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        )

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _BEARER.sub(rf"\g<1>{MASK}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            # Formatters re-render exc_info only when exc_text is empty; keep both consistent.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(secrets: Iterable[str] = (), logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one shared filter to every handler of `logger` (the root logger by default)."""
    target = logger if logger is not None else logging.getLogger()
    existing = [f for h in target.handlers for f in h.filters if isinstance(f, RedactingFilter)]
    shared = existing[0] if existing else RedactingFilter()
    shared.set_secrets(secrets)
    for handler in target.handlers:
        if shared not in handler.filters:
            handler.addFilter(shared)
    return shared
