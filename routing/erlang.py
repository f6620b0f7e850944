"""Erlang C: waiting probability, service level, ASA and staffing for a queue of contacts.

The model (M/M/N): arrivals are a Poisson process of rate λ, handle times are exponential with
mean AHT, N agents each handle one contact at a time, nobody abandons and the queue is
unbounded. The offered traffic is A = λ · AHT Erlangs; the queue is stable only when N > A.

- Erlang B (blocking, no queue), by the recursion B(0) = 1, B(n) = A·B(n-1) / (n + A·B(n-1)):
  no factorials or powers, so it stays exact to rounding for any traffic (A^N / N! overflows a
  float past N ≈ 170).
- Erlang C, the probability that a contact waits: C = N·B / (N - A·(1 - B)).
- Service level for a threshold T: SL(T) = 1 - C · e^(-(N - A)·T / AHT).
- Average speed of answer: ASA = C · AHT / (N - A).
- Occupancy: A / N.

``staffing`` finds the smallest N that meets a target service level (and, optionally, keeps
occupancy at or under a ceiling). docs/metrics.md says how the wallboard feeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_AGENTS = 1_000_000


def _check(servers: int, traffic: float) -> None:
    if servers < 0:
        raise ValueError("servers must be at least 0")
    if not math.isfinite(traffic) or traffic < 0:
        raise ValueError("traffic must be a finite number of Erlangs, at least 0")


def erlang_b(servers: int, traffic: float) -> float:
    """The probability that a contact finds all ``servers`` busy when there is no queue."""
    _check(servers, traffic)
    b = 1.0
    for n in range(1, servers + 1):
        b = traffic * b / (n + traffic * b)
    return b


def _c_from_b(servers: int, traffic: float, b: float) -> float:
    if servers <= traffic:
        return 1.0  # unstable: every contact waits (and the queue grows without end)
    return servers * b / (servers - traffic * (1.0 - b))


def erlang_c(servers: int, traffic: float) -> float:
    """The probability that a contact has to wait (1.0 when ``servers`` <= ``traffic``)."""
    return _c_from_b(servers, traffic, erlang_b(servers, traffic))


def _service_level(
    servers: int, traffic: float, c: float, aht_seconds: float, threshold_seconds: float
) -> float:
    if servers <= traffic:
        return 0.0
    return 1.0 - c * math.exp(-(servers - traffic) * threshold_seconds / aht_seconds)


def _asa(servers: int, traffic: float, c: float, aht_seconds: float) -> float:
    if servers <= traffic:
        return math.inf
    return c * aht_seconds / (servers - traffic)


def service_level(
    servers: int, traffic: float, aht_seconds: float, threshold_seconds: float
) -> float:
    """The share of contacts answered within ``threshold_seconds`` (0.0 when unstable)."""
    if aht_seconds <= 0 or threshold_seconds < 0:
        raise ValueError("aht_seconds must be > 0 and threshold_seconds >= 0")
    return _service_level(
        servers, traffic, erlang_c(servers, traffic), aht_seconds, threshold_seconds
    )


def average_speed_of_answer(servers: int, traffic: float, aht_seconds: float) -> float:
    """The mean wait of all contacts, in seconds (infinite when unstable)."""
    if aht_seconds <= 0:
        raise ValueError("aht_seconds must be > 0")
    return _asa(servers, traffic, erlang_c(servers, traffic), aht_seconds)


@dataclass(frozen=True, slots=True)
class Staffing:
    agents: int
    traffic: float  # Erlangs
    probability_wait: float
    service_level: float
    asa_seconds: float
    occupancy: float


def staffing(
    arrival_rate_per_second: float,
    aht_seconds: float,
    *,
    target: float,
    threshold_seconds: float,
    max_occupancy: float | None = None,
    max_agents: int = MAX_AGENTS,
) -> Staffing:
    """The fewest agents whose predicted service level is at least ``target`` (a share,
    0 < target < 1) within ``threshold_seconds`` and whose occupancy is at most
    ``max_occupancy`` (when given). No traffic needs no agents. Raises ValueError when even
    ``max_agents`` would not do."""
    if not 0 < target < 1:
        raise ValueError("target must be a share between 0 and 1 (exclusive)")
    if aht_seconds <= 0 or threshold_seconds < 0 or arrival_rate_per_second < 0:
        raise ValueError("the arrival rate and threshold must be >= 0, the AHT > 0")
    if max_occupancy is not None and not 0 < max_occupancy <= 1:
        raise ValueError("max_occupancy must be in (0, 1]")
    traffic = arrival_rate_per_second * aht_seconds
    if traffic == 0:
        return Staffing(0, 0.0, 0.0, 1.0, 0.0, 0.0)
    # Start at the first stable count (and the first within the occupancy ceiling), then add
    # agents one at a time, carrying Erlang B forward by one step of its recursion each time.
    start = math.floor(traffic) + 1
    if max_occupancy is not None:
        start = max(start, math.ceil(traffic / max_occupancy))
    if start > max_agents:
        raise ValueError(f"more than {max_agents} agents would be needed")
    b = erlang_b(start, traffic)
    servers = start
    while True:
        c = _c_from_b(servers, traffic, b)
        level = _service_level(servers, traffic, c, aht_seconds, threshold_seconds)
        if level >= target:
            return Staffing(
                agents=servers,
                traffic=traffic,
                probability_wait=c,
                service_level=level,
                asa_seconds=_asa(servers, traffic, c, aht_seconds),
                occupancy=traffic / servers,
            )
        servers += 1
        if servers > max_agents:
            raise ValueError(f"more than {max_agents} agents would be needed")
        b = traffic * b / (servers + traffic * b)
