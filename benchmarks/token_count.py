"""What counting a stream's text for the token estimator costs the router per event (issue 21): LocalAI's chat and
completion token events, counted from their bytes (`TextCount.add_event`, what the relay does) vs decoded and read
(`sse.classify` + `answer_text`, what it would cost otherwise), with splitting the event out of the stream (which
the relay does for every event anyway) as the peer, all in one run.

Run by hand: python benchmarks/token_count.py [--events 100000]
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable

from localai_operator.router import sse, tokens
from localai_operator.router.paths import StreamFormat


def event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


HEAD = {"created": 1796670918, "id": "82992911-15c4-4649-b4e1-e9fb213fad73", "model": "gemma-3-270m-it"}
EVENTS = {
    StreamFormat.CHAT: event(
        {**HEAD, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " sea"}}]}
    ),
    StreamFormat.COMPLETION: event(
        {**HEAD, "object": "text_completion", "choices": [{"index": 0, "text": " sea"}]}
    ),
}


def per_event(work: Callable[[], object], events: int) -> float:
    return min(timeit.repeat(work, number=events, repeat=5)) / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    events = parser.parse_args().events
    for fmt, raw in EVENTS.items():
        counted = tokens.TextCount()
        keys = tokens.TEXT_KEYS[fmt]
        scanned = per_event(lambda: counted.add_event(raw, keys), events)  # noqa: B023
        decoded = per_event(
            lambda: counted.add(tokens.answer_text(sse.classify(sse.event_data(raw), fmt)[1])),  # noqa: B023
            events,
        )
        split = per_event(lambda: sse.EventSplitter().feed(raw), events)  # noqa: B023
        print(
            f"{fmt.value}: counted from bytes {scanned * 1e6:.2f} us, decoded {decoded * 1e6:.2f} us "
            f"({scanned / decoded:.2f}x), splitting it {split * 1e6:.2f} us ({scanned / split:.2f}x) per event"
        )


if __name__ == "__main__":
    main()
