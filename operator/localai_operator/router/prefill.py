"""Each pod's prefill rate, learned from the first-token times the router sees, for first-token budgets that know
the prompt: `firstTokenTimeoutMs + promptTokens / rate`, up to `maxFirstTokenTimeoutMs`.

A sample is one successful local first token: the prompt's estimated tokens (router/tokens.py) over the seconds
from sending the request to that pod until its first content token. The estimate is the lower quartile of a pod
and model's last WINDOW samples — not a mean, because the samples are a mixture with a long fast tail: llama.cpp
answers a prompt whose start it still holds 10-60x sooner, and with prefix affinity most requests are such hits.
A rate learned from them would give a cold long prompt a budget it cannot meet. So the learner takes what looks
like a cache miss and leans slow:

- samples the affinity table calls warm (the pod served the request's key last) are not learned;
- a sample more than HIT_FACTOR times faster than the current estimate is taken for a hit the table did not see
  (another key sharing the prefix) and not learned;
- samples cut by the budget are never seen (they have no first token): the estimate is of requests that made it,
  which is why it is a low quantile rather than a middle one;
- prompts under MIN_SAMPLE_TOKENS are not learned: their time is the pod's fixed cost more than its prefill.

The time also holds the pod's fixed cost (the request's way in, its first decode step), so the rate reads low and
the budget errs long. Until a pod has MIN_SAMPLES, the model's rate across pods stands in; until the model has
them, the fixed budget applies. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Final, TypeVar

WINDOW: Final = 32
MIN_SAMPLES: Final = 4
QUANTILE: Final = 0.25
MIN_SAMPLE_TOKENS: Final = 256
HIT_FACTOR: Final = 4.0
# (pod, model) pairs remembered: pods come and go, and only models a pod answered are learned.
MAX_PAIRS: Final = 256


class Window:
    """The last WINDOW rates (tokens per second) of one pod and model, and their lower quartile."""

    __slots__ = ("_samples", "estimate")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self.estimate: float | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, rate: float) -> None:
        self._samples.append(rate)
        if len(self._samples) >= MIN_SAMPLES:
            ordered = sorted(self._samples)
            self.estimate = ordered[math.floor(QUANTILE * (len(ordered) - 1))]


PairKey = tuple[str, str | None]
_K = TypeVar("_K")


class PrefillRates:
    """Learned prefill rates per pod (its base URL) and model, and per model across pods."""

    __slots__ = ("_models", "_pairs", "rejected")

    def __init__(self) -> None:
        self._pairs: OrderedDict[PairKey, Window] = OrderedDict()
        self._models: OrderedDict[str | None, Window] = OrderedDict()
        # Samples taken for cache hits (warm, or too fast), for the tests and /readyz.
        self.rejected = 0

    def rate(self, pod: str, model: str | None) -> float | None:
        """Tokens per second to expect of `pod` for `model`: its own estimate, else the model's, else None."""
        window = self._pairs.get((pod, model))
        if window is not None and window.estimate is not None:
            return window.estimate
        pooled = self._models.get(model)
        return pooled.estimate if pooled is not None else None

    def learn(self, pod: str, model: str | None, tokens: int, seconds: float, warm: bool) -> bool:
        """One first token: `tokens` of prompt in `seconds` on `pod`. True when it was learned."""
        if tokens < MIN_SAMPLE_TOKENS or seconds <= 0:
            return False
        rate = tokens / seconds
        known = self.rate(pod, model)
        if warm or (known is not None and rate > HIT_FACTOR * known):
            self.rejected += 1
            return False
        self._window(self._pairs, (pod, model)).add(rate)
        self._window(self._models, model).add(rate)
        return True

    @staticmethod
    def _window(windows: OrderedDict[_K, Window], key: _K) -> Window:
        found = windows.get(key)
        if found is None:
            found = windows[key] = Window()
            if len(windows) > MAX_PAIRS:
                windows.popitem(last=False)
        else:
            windows.move_to_end(key)
        return found

    def figures(self, pods: frozenset[str]) -> Iterator[tuple[str, str | None, float]]:
        """(pod, model, rate) of every learned estimate of the pods known now."""
        for (pod, model), window in self._pairs.items():
            if pod in pods and window.estimate is not None:
                yield pod, model, window.estimate
