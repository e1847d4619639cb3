"""The route's cloud spend and avoided cost per UTC day and month, as this router replica counted them, and the
spend cap's verdict. Kept in a state file (an emptyDir) so that a restarted router container resumes the figures
of its period instead of starting the cap again from zero.

The cap is shared between the route's replicas without talking to each other: each may spend its share of
what the route's earlier pods have not already spent (`SpendShare`, written by the operator). With one replica
that is the cap itself, counted exactly; with N, the route never spends more than the cap while at most N
router pods run, and a replica whose clients bring more than a 1/N share of the traffic stops falling back
before the route's total reaches the cap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from localai_operator.wire import SPEND, SpendCap, SpendPeriod, SpendShare, period_of

log = logging.getLogger(__name__)

STATE_FILE: Final = "ledger.json"


def _next_boundary(wall: float) -> float:
    """The next UTC midnight: both periods can only change there."""
    moment = datetime.fromtimestamp(wall, UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp() + 86400


class Ledger:
    """Amounts per (kind, period id) for the current day and month; older periods are dropped."""

    def __init__(self, directory: str | Path | None, wall: Callable[[], float] = time.time) -> None:
        self.path = Path(directory) / STATE_FILE if directory else None
        self.wall = wall
        self._amounts: dict[tuple[str, str], float] = {}
        self._periods: tuple[str, str] = ("", "")
        self._boundary = 0.0
        self._dirty = False
        # Estimated cost of the requests on their way to the cloud now (see `admit`).
        self.reserved = 0.0
        self.load()

    # ------------------------------------------------------------------ periods

    def periods(self) -> tuple[str, str]:
        """(day, month) now."""
        now = self.wall()
        if now >= self._boundary:
            self._periods = (period_of("daily", now), period_of("monthly", now))
            self._boundary = _next_boundary(now)
            current = set(self._periods)
            for key in [k for k in self._amounts if k[1] not in current]:
                del self._amounts[key]
        return self._periods

    def current(self, period: SpendPeriod) -> str:
        day, month = self.periods()
        return day if period == "daily" else month

    # ------------------------------------------------------------------ figures

    def amount(self, kind: str, period: str) -> float:
        return self._amounts.get((kind, period), 0.0)

    def figures(self) -> list[tuple[str, str, float]]:
        """(kind, period, amount) of the current day and month."""
        self.periods()
        return sorted((kind, period, amount) for (kind, period), amount in self._amounts.items())

    def add(self, kind: str, amount: float) -> None:
        if amount <= 0:
            return
        for period in self.periods():
            self._amounts[(kind, period)] = self._amounts.get((kind, period), 0.0) + amount
        self._dirty = True
        if kind == SPEND:
            self.save()  # money: on disk before the next request asks whether the cap is reached

    def allowance(self, cap: SpendCap, share: SpendShare | None) -> float:
        """What this replica may spend in the cap's current period: its share of what earlier pods left."""
        period = self.current(cap.period)
        carried = 0.0
        replicas = 1
        if share is not None:
            replicas = share.replicas
            if share.carried is not None and share.carried.period == period:
                carried = share.carried.amount
        return max(0.0, cap.amount - carried) / replicas

    def admit(self, cap: SpendCap | None, share: SpendShare | None, estimate: float) -> bool:
        """Reserve `estimate` for a request about to go to the cloud, if what is spent and reserved by the
        requests already on their way leaves some of the allowance; `settle` gives the reservation back once
        the request's real cost is counted. So concurrent requests cannot each see the cap unreached."""
        if cap is None:
            return True
        spent = self.amount(SPEND, self.current(cap.period))
        if spent + self.reserved >= self.allowance(cap, share):
            return False
        self.reserved += estimate
        return True

    def settle(self, estimate: float) -> None:
        self.reserved = max(0.0, self.reserved - estimate)

    def exhausted(self, cap: SpendCap | None, share: SpendShare | None) -> bool:
        """This replica has spent its share of the cap for the current period."""
        if cap is None:
            return False
        return self.amount(SPEND, self.current(cap.period)) >= self.allowance(cap, share)

    # ------------------------------------------------------------------ the state file

    def load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
            entries = data["amounts"]
            loaded = {(str(e["kind"]), str(e["period"])): float(e["amount"]) for e in entries}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("the spend ledger %s is unreadable (%s); starting from zero", self.path, err)
            return
        self._amounts = loaded
        self._boundary = 0.0
        self.periods()
        if self._amounts:
            log.info("spend ledger resumed from %s: %s", self.path, self._amounts)

    def save(self) -> None:
        """Write the figures if they changed: a new file renamed over the old, so a crash leaves one whole."""
        if self.path is None or not self._dirty:
            return
        self._dirty = False
        entries = [{"kind": k, "period": p, "amount": a} for k, p, a in self.figures()]
        temporary = self.path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps({"amounts": entries}))
            os.replace(temporary, self.path)
        except OSError as err:
            self._dirty = True
            log.warning("cannot write the spend ledger %s: %s", self.path, err)
            with contextlib.suppress(OSError):
                temporary.unlink()
