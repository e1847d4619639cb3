"""A LocalAI stand-in's prompt processing: time to the first token that grows with the prompt, llama.cpp's slots,
and its prompt cache in the three tiers the real v4.9.0 binary shows (shared/REAL-LOCALAI.md, one server,
`parallel:2`, a 2,888-token system prompt and a new question each time): cold 13.2 s; restored from the RAM cache
2.4-2.7 s, for a prefix seen once before or pushed out of the slots by others; resident in a slot 0.17-0.22 s, for
a prefix seen at least twice and no more distinct prefixes than slots since.

Here a prefix is a prompt's first FAMILY_CHARS characters. Of a new prompt, the start it shares with the longest
match among the prompts the pod has seen costs nothing when its prefix is resident, is read `restore_speedup` times
faster than cold when it is not, and the rest is read cold at `tokens_per_second`; `overhead` is the first decode
step. Requests beyond the slots wait for one, as llama.cpp queues them. Tokens are counted as the router's
estimator counts ASCII text (4 characters each). `peak` is the most requests that were in slots at once: what a test
compares to the slots the router was told of; `last` is the last request's (resident, restored, cold) tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

CHARS_PER_TOKEN: Final = 4
# Prompts that share this many first characters share a prefix (a system prompt, in the benchmark's workload).
FAMILY_CHARS: Final = 1000
# Distinct prompts the RAM cache keeps (the real one is bounded by its size; it forgets).
RAM_PROMPTS: Final = 64


def prompt_text(payload: Any) -> str:
    """What the model reads of a request, in order: instructions, chat messages (role and text), input, prompt."""
    if not isinstance(payload, dict):
        return ""
    parts: list[str] = []
    for key in ("instructions", "messages", "input", "prompt"):
        value = payload.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    content = item.get("content")
                    text = content if isinstance(content, str) else json.dumps(content)
                    parts.append(f"<{item.get('role')}>{text}")
                else:
                    parts.append(str(item))
    return "\n".join(parts)


def shared_start(a: str, b: str) -> int:
    """Characters `a` and `b` share at their start (a binary search of slice comparisons: C speed on long
    prompts)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class PromptCache:
    """How long a stand-in pod takes to its first token, given what it served before."""

    slots: int = 2
    # Cold prompt tokens per second (the real Gemma 3 270M on one CPU thread: ~220).
    tokens_per_second: float = 2000.0
    # A prompt restored from the RAM cache is read this much faster than a cold one (REAL-LOCALAI: ~5x).
    restore_speedup: float = 5.0
    overhead: float = 0.005
    peak: int = 0
    busy: int = 0
    last: tuple[int, int, int] = (0, 0, 0)
    # Prefixes served, most recent last, with how often; the prompts seen (the RAM cache).
    _prefixes: OrderedDict[str, int] = field(default_factory=OrderedDict, init=False, repr=False)
    _prompts: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False, repr=False)
    _free: asyncio.Condition | None = field(default=None, init=False, repr=False)

    def delay(self, text: str) -> float:
        """Seconds to the first token of `text`; the pod then remembers it."""
        prefix = text[:FAMILY_CHARS]
        seen = self._prefixes.get(prefix, 0)
        resident = seen >= 2 and prefix in list(self._prefixes)[-self.slots :]
        shared = max((shared_start(old, text) for old in self._prompts), default=0)
        cold = len(text) - shared
        tiers = (shared, 0) if resident else (0, shared)
        self.last = (tiers[0] // CHARS_PER_TOKEN, tiers[1] // CHARS_PER_TOKEN, cold // CHARS_PER_TOKEN)
        self._prefixes[prefix] = seen + 1
        self._prefixes.move_to_end(prefix)
        self._prompts[text] = None
        self._prompts.move_to_end(text)
        for remembered in (self._prefixes, self._prompts):
            if len(remembered) > RAM_PROMPTS:
                remembered.popitem(last=False)
        rate = self.tokens_per_second * CHARS_PER_TOKEN
        return self.overhead + tiers[1] / (rate * self.restore_speedup) + cold / rate

    @contextlib.asynccontextmanager
    async def serving(self, payload: Any) -> AsyncIterator[float]:
        """Hold a slot for one request (waiting for one when all are busy); yields its time to the first token."""
        if self._free is None:
            self._free = asyncio.Condition()
        async with self._free:
            await self._free.wait_for(lambda: self.busy < self.slots)
            self.busy += 1
            self.peak = max(self.peak, self.busy)
        try:
            yield self.delay(prompt_text(payload))
        finally:
            async with self._free:
                self.busy -= 1
                self._free.notify()
