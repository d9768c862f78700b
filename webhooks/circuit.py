"""A circuit breaker per receiver host, held in the memory of one process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

log = logging.getLogger("webhooks.dispatcher")


class CircuitState(Enum):
    CLOSED = "closed"  # attempts flow
    OPEN = "open"  # no attempts until the cool-down ends
    HALF_OPEN = "half_open"  # the cool-down ended: one probe may go
    PROBING = "probing"  # the probe is in flight


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float | None = None  # monotonic seconds
    probing: bool = False
    opened_at: datetime | None = None  # when the circuit last went from closed to open


class CircuitBreakers:
    """Stops attempts to a host after consecutive failures, for a cool-down.

    After ``failure_threshold`` failed attempts in a row the host's circuit
    opens for ``cooldown_s``; then one probe goes through. A successful probe
    closes the circuit, a failed one opens it again.
    """

    def __init__(self, failure_threshold: int, cooldown_s: float) -> None:
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._circuits: dict[str, _Circuit] = {}

    def state(self, host: str, now: float) -> CircuitState:
        circuit = self._circuits.get(host)
        if circuit is None or circuit.open_until is None:
            return CircuitState.CLOSED
        if circuit.probing:
            return CircuitState.PROBING
        if now < circuit.open_until:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def reopens_at(self, host: str) -> float | None:
        circuit = self._circuits.get(host)
        return None if circuit is None else circuit.open_until

    def start_attempt(self, host: str, now: float) -> None:
        if self.state(host, now) is CircuitState.HALF_OPEN:
            self._circuits[host].probing = True

    def record_success(self, host: str) -> None:
        circuit = self._circuits.pop(host, None)
        if circuit is not None and circuit.open_until is not None:
            log.info("circuit for %s closed", host, extra={"event": "circuit_closed", "host": host})

    def record_failure(self, host: str, now: float) -> None:
        circuit = self._circuits.setdefault(host, _Circuit())
        circuit.failures += 1
        was_probing = circuit.probing
        circuit.probing = False
        if was_probing or circuit.failures >= self._threshold:
            if circuit.open_until is None:
                circuit.opened_at = datetime.now(UTC)
            if circuit.open_until is None or was_probing:
                log.warning(
                    "circuit for %s opened after %d consecutive failures; "
                    "next probe in %.0f s",
                    host,
                    circuit.failures,
                    self._cooldown_s,
                    extra={"event": "circuit_opened", "host": host},
                )
            circuit.open_until = now + self._cooldown_s

    def host_limits(self, now: float) -> dict[str, int]:
        """Return how many attempts each host with a tripped circuit may start."""
        limits = {}
        for host in self._circuits:
            state = self.state(host, now)
            if state in (CircuitState.OPEN, CircuitState.PROBING):
                limits[host] = 0
            elif state is CircuitState.HALF_OPEN:
                limits[host] = 1
        return limits

    def open_circuits(self, now: float) -> list[tuple[str, datetime]]:
        """Return the hosts whose circuit is not closed, with when it opened."""
        found = []
        for host, circuit in self._circuits.items():
            if self.state(host, now) is not CircuitState.CLOSED and circuit.opened_at:
                found.append((host, circuit.opened_at))
        return sorted(found, key=lambda item: item[1])

    def open_count(self, now: float) -> int:
        return sum(
            1 for host in self._circuits if self.state(host, now) is not CircuitState.CLOSED
        )
