"""Prefix-aware balancing: which pod a generation request goes to when several could take it.

llama.cpp keeps each slot's last prompt in its KV cache (and an idle slot's in a RAM cache): a pod that read a prompt's
start recently answers it 10-60x sooner than one that has to read it again (REAL-LOCALAI: a 2,888-token system
prompt took 0.2 s to the first token resident in a slot, 2.5 s restored from RAM, 13 s cold), and a pod given more
live prompts than slots loses the fastest tier. So a request is keyed by what the cache can reuse — its session when
the client names one, else the start of its prompt — and goes to the key's home, the pod that served it last, while
that pod has a free slot. A busy home overrides the affinity for that request only (the pod with the fewest in flight
takes it; the home still holds the prompt); an unavailable one (open breaker, failed connection) moves the key.

A key no known pod is home to goes where consistent hashing with bounded loads puts it (KubeAI's PrefixHash, itself
Mirrokni et al.): clockwise from the key on a ring of every pod's points, the first pod that can take it and is home
to fewer of the most recently used keys than it has slots, else the first that can take it. Every router replica
builds the same ring, so they agree on a new prompt's pod.

Pure: no I/O, no clock; `Affinity` holds the table shared by every config snapshot of a router.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import itertools
import math
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

from localai_operator.router.body import JsonBody, item_spans
from localai_operator.router.policy import Balanced

# Where a client names its session, in order of precedence: the header, then the body's fields (OpenAI's
# `prompt_cache_key` says exactly this; `user` names the end user, whose turns share a history).
SESSION_HEADER: Final = "X-Session-Id"
SESSION_FIELDS: Final = ("prompt_cache_key", "session_id", "session", "user")
# The members that hold a prompt, in the order a model reads them: the Responses API's system text, chat
# messages, the Responses API's input, a completion's prompt.
PROMPT_FIELDS: Final = ("instructions", "messages", "input", "prompt")
# Keys remembered (most recently used first out): about 1 MiB. A client sending endless distinct prompts only
# pushes others out, and a key that was pushed out still lands on its ring position.
TABLE_SIZE: Final = 8192
# Points per pod on the ring (KubeAI's default replication is 256; 128 keeps the load within ~9 % of even).
RING_POINTS: Final = 128
# Without slots for the model, a pod is busy above this times the mean in flight (KubeAI's default 125 %).
LOAD_FACTOR: Final = 1.25
_USER_ROLE: Final = re.compile(rb'"role"\s*:\s*"user"')
_USER_FIRST: Final = re.compile(rb'\{\s*"role"\s*:\s*"user"')
_NEXT_ITEM: Final = re.compile(rb'\{\s*"role"\s*:')
_ROLE_FIRST: Final = re.compile(rb'\[\s*\{\s*"role"\s*:')
# What separates two array items, or ends the array: cut so that a conversation's first turn and its later ones
# end their key on the same byte.
_SEPARATORS: Final = b" \t\r\n,"
_KEY_SPACE: Final = 1 << 32
_PROMPT_ORDER: Final = frozenset(PROMPT_FIELDS)
_SESSION_RANK: Final = {name: rank for rank, name in enumerate(SESSION_FIELDS)}
_QUOTE: Final = ord('"')


class Outcome(enum.StrEnum):
    """How a keyed request was placed: the `result` label of the affinity metric."""

    # Sent to its key's home, the pod that served the key last.
    HIT = "hit"
    # The home was busy (its slots full, or above the bounded load): the least-outstanding pod took this one, and
    # the key stays home.
    OVERRIDE = "override"
    # The home's breaker is open or its connection just failed: the least-outstanding pod took it and is home now.
    MOVED = "moved"
    # No pod known now is the key's home: placed by the ring.
    NEW = "new"


def _window(raw: bytes | bytearray, start: int, end: int, room: int) -> bytes | bytearray:
    """A prompt member's first bytes: for an array (chat messages, input items), up to the end of its first user
    message, so a conversation keeps its key as it grows."""
    window = raw[start : min(end, start + room)]
    if window[:1] != b"[":
        return window
    user = _USER_FIRST.search(window) if b'"user"' in window else None
    if user is not None:
        # Messages written role first (every SDK does): the next one opens with `{"role"`, found by one search.
        following = _NEXT_ITEM.search(window, user.end())
        if following is not None:
            return window[: following.start()].rstrip(_SEPARATORS)
        if end <= start + room:
            return window[:-1].rstrip(_SEPARATORS)  # the whole array: its user message is its last
        return window
    if _ROLE_FIRST.match(window):
        return window  # written role first, and no user message within the window: all of it
    for item_start, item_end in item_spans(window, 0):
        if _USER_ROLE.search(window, item_start, item_end):
            return window[:item_end]
    return window


def request_key(body: JsonBody | None, session: str | None, limit: int) -> int | None:
    """The affinity key of a request: its session, else the first `limit` bytes of its prompt (with its model,
    whose cache is its own); None when it has neither."""
    if body is None:
        return None
    model = (body.model or "").encode("utf-8", "surrogatepass")
    if session:
        return zlib.crc32(session.encode("utf-8", "surrogatepass")[:limit], zlib.crc32(b"session\0" + model))
    raw = body.raw
    named: tuple[int, int] | None = None
    rank = len(SESSION_FIELDS)
    prompt: dict[str, tuple[int, int]] | None = None
    for member in body.members:
        name = member.key
        if name in _PROMPT_ORDER:
            if prompt is None:
                prompt = {}
            prompt[name] = (member.value_start, member.end)
        elif name in _SESSION_RANK:
            # A non-empty string only: `"user": ""` names nobody.
            order = _SESSION_RANK[name]
            if order < rank and raw[member.value_start] == _QUOTE and member.end - member.value_start > 2:
                named, rank = (member.value_start, member.end), order
    if named is not None:
        return zlib.crc32(raw[named[0] : min(named[1], named[0] + limit)], zlib.crc32(b"session\0" + model))
    if prompt is None:
        return None
    key = zlib.crc32(model + b"\0")
    room = limit
    # In the order a model reads them, whatever the order of the body's members.
    spans = list(prompt.values()) if len(prompt) == 1 else [prompt[n] for n in PROMPT_FIELDS if n in prompt]
    for start, end in spans:
        window = _window(raw, start, end, room)
        key = zlib.crc32(window, key)
        room -= len(window)
        if room <= 0:
            break
    return key


class Ring:
    """Every pod's RING_POINTS points on a 32-bit circle, sorted; a key's pods are those met walking clockwise."""

    __slots__ = ("_owners", "_points", "size")

    def __init__(self, urls: Sequence[str]) -> None:
        points = sorted(
            (int.from_bytes(hashlib.sha1(f"{url}#{i}".encode()).digest()[:4], "big"), index)
            for index, url in enumerate(urls)
            for i in range(RING_POINTS)
        )
        self._points = [point for point, _ in points]
        self._owners = [owner for _, owner in points]
        self.size = len(urls)

    def walk(self, key: int) -> Iterator[int]:
        """The pods' indexes in the order met clockwise from `key`, each once."""
        start = bisect.bisect_left(self._points, key % _KEY_SPACE)
        owners = self._owners
        count = len(owners)
        seen: set[int] = set()
        for offset in range(count):
            owner = owners[(start + offset) % count]
            if owner not in seen:
                yield owner
                seen.add(owner)
                if len(seen) == self.size:
                    return


_B = TypeVar("_B", bound=Balanced)


class Affinity:
    """Each key's home: the pod that served it last when it could (a bounded LRU table), the ring of the current
    pods, and the counts of each outcome. Shared by every config snapshot of a router, so a reload or a new pod
    keeps them."""

    __slots__ = ("_pods", "_ring", "_ring_urls", "_table", "outcomes")

    def __init__(self) -> None:
        self._table: OrderedDict[int, str] = OrderedDict()
        self._ring: Ring | None = None
        self._ring_urls: tuple[str, ...] = ()
        self._pods: frozenset[str] = frozenset()
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)

    def __len__(self) -> int:
        return len(self._table)

    def keep(self, urls: Sequence[str]) -> None:
        """The pods are `urls` now: forget every key whose home is not among them. A pod that left the ready set
        holds no prompt while it is gone (its keys are placed anew, by the ring), and one that comes back under
        the same address, perhaps restarted with an empty cache, is home to none of its old keys."""
        pods = frozenset(urls)
        if pods == self._pods:
            return
        gone = self._pods - pods
        self._pods = pods
        if gone:
            table = self._table
            for key in [key for key, home in table.items() if home in gone]:
                del table[key]

    def ring(self, urls: tuple[str, ...]) -> Ring:
        if self._ring is None or urls != self._ring_urls:
            self._ring, self._ring_urls = Ring(urls), urls
        return self._ring

    def choose(
        self,
        key: int,
        endpoints: Sequence[_B],
        urls: tuple[str, ...],
        now: float,
        exclude: object,
        has_room: Callable[[_B], bool] | None,
        slots: int | None = None,
    ) -> tuple[int | None, Outcome]:
        """The index of the endpoint for `key` and how it was chosen; None: the least-outstanding choice. `slots`:
        the model's slots per pod, when known."""
        table = self._table
        home = table.get(key)
        if home is not None:
            table.move_to_end(key)
            index = urls.index(home) if home in urls else -1  # a pod that left since `keep`: the key is new
            if index >= 0:
                endpoint = endpoints[index]
                if endpoint is exclude or not endpoint.breaker.available(now):
                    return None, Outcome.MOVED
                if self._takes(endpoint, endpoints, has_room):
                    return index, Outcome.HIT
                return None, Outcome.OVERRIDE
        # A new key: clockwise from it, the first pod that can take it and holds fewer of the most recent keys
        # than it has slots (it keeps them all resident), else the first that can take it.
        recent = self._recent(len(endpoints) * slots) if slots is not None else None
        taker: int | None = None
        for index in self.ring(urls).walk(key):
            endpoint = endpoints[index]
            if endpoint is exclude or not endpoint.breaker.available(now):
                continue
            if not self._takes(endpoint, endpoints, has_room):
                continue
            if recent is None or slots is None or recent.get(urls[index], 0) < slots:
                return index, Outcome.NEW
            if taker is None:
                taker = index
        return taker, Outcome.NEW

    def _recent(self, count: int) -> dict[str, int]:
        """How many of the `count` most recently used keys each pod is home to."""
        homes: dict[str, int] = {}
        for url in itertools.islice(reversed(self._table.values()), count):
            homes[url] = homes.get(url, 0) + 1
        return homes

    @staticmethod
    def _takes(endpoint: _B, endpoints: Sequence[_B], has_room: Callable[[_B], bool] | None) -> bool:
        """Not busy: a free slot for the model, or without slots, at most the bounded load once it takes this
        request: LOAD_FACTOR times the mean in flight, rounded up (Mirrokni et al.'s capacity)."""
        if has_room is not None:
            return has_room(endpoint)
        total = sum(e.outstanding for e in endpoints)
        return endpoint.outstanding + 1 <= math.ceil(LOAD_FACTOR * (total + 1) / len(endpoints))

    def served(self, key: int, url: str, outcome: Outcome) -> None:
        """`url` took the request keyed `key`: its home unless the home was only busy (it still holds the prompt,
        and the next request goes back to it)."""
        self.outcomes[outcome] += 1
        if outcome is Outcome.HIT or outcome is Outcome.OVERRIDE:
            return
        table = self._table
        table[key] = url
        table.move_to_end(key)
        if len(table) > TABLE_SIZE:
            table.popitem(last=False)
