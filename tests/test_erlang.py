"""Erlang B and C against published and hand-computed values, and at traffic where the
textbook formula (A^N / N!) overflows a float.

Sources of the reference values:
- Call Centre Helper, "Erlang C Formula - Made Simple With an Easy Worked Example"
  (callcentrehelper.com): 100 calls in 30 minutes with an AHT of 180 s is 10 Erlangs; with
  11 agents the probability of waiting is 0.6821 and the service level (20 s) 39.0%; with
  14 agents, 0.1741 and 88.8%, with an ASA of 7.8 s.
- A standard Erlang B table (the grade-of-service tables of teletraffic textbooks): 10 trunks
  carry 4.46 Erlangs at 1% blocking, 5.08 at 2% and 6.22 at 5%.
- By hand (below): A = 3, N = 5.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from routing.erlang import (
    average_speed_of_answer,
    erlang_b,
    erlang_c,
    service_level,
    staffing,
)


def test_the_call_centre_helper_worked_example() -> None:
    traffic = 100 / 1800 * 180  # 10 Erlangs
    assert traffic == pytest.approx(10)
    assert erlang_c(11, traffic) == pytest.approx(0.6821, abs=5e-5)
    assert service_level(11, traffic, 180, 20) == pytest.approx(0.390, abs=5e-4)
    assert erlang_c(14, traffic) == pytest.approx(0.1741, abs=5e-5)
    assert service_level(14, traffic, 180, 20) == pytest.approx(0.888, abs=5e-4)
    assert average_speed_of_answer(14, traffic, 180) == pytest.approx(7.8, abs=0.05)
    # So the smallest team for 80/20 is 14: 13 agents give 0.7956 < 0.8.
    assert service_level(13, traffic, 180, 20) == pytest.approx(0.7956, abs=5e-4)
    plan = staffing(100 / 1800, 180, target=0.8, threshold_seconds=20)
    assert plan.agents == 14
    assert plan.traffic == pytest.approx(10)
    assert plan.probability_wait == pytest.approx(0.1741, abs=5e-5)
    assert plan.occupancy == pytest.approx(10 / 14)


@pytest.mark.parametrize(("traffic", "blocking"), [(4.46, 0.01), (5.08, 0.02), (6.22, 0.05)])
def test_erlang_b_matches_the_tables(traffic: float, blocking: float) -> None:
    # Table values are given to two decimals of traffic: within 3% of the blocking.
    assert erlang_b(10, traffic) == pytest.approx(blocking, rel=0.03)


def test_a_small_case_by_hand() -> None:
    """A = 3 Erlangs (one call a minute, 3 minutes each), N = 5 agents.
    sum_{k<5} 3^k/k! = 1 + 3 + 9/2 + 27/6 + 81/24 = 16.375;
    3^5/5! x 5/(5-3) = 2.025 x 2.5 = 5.0625;  C = 5.0625 / 21.4375 = 81/343."""
    assert erlang_c(5, 3) == pytest.approx(81 / 343, rel=1e-12)
    # SL(30 s) with AHT 180 s: 1 - (81/343) e^(-(5-3) 30/180) = 1 - 0.236152 x 0.716531.
    assert service_level(5, 3, 180, 30) == pytest.approx(1 - (81 / 343) * math.exp(-1 / 3))
    assert average_speed_of_answer(5, 3, 180) == pytest.approx((81 / 343) * 180 / 2)
    # Erlang B, same traffic: (3^5/5!) / sum_{k<=5} 3^k/k! = 2.025 / 18.4 = 0.110054...
    assert erlang_b(5, 3) == pytest.approx(2.025 / 18.4, rel=1e-12)


def exact_erlang_c(servers: int, traffic: Fraction) -> Fraction:
    """The textbook formula in exact rational arithmetic (slow, but no rounding at all)."""
    terms = [traffic**k / math.factorial(k) for k in range(servers)]
    top = traffic**servers / math.factorial(servers) * servers / (servers - traffic)
    return top / (sum(terms, Fraction(0)) + top)


@pytest.mark.parametrize(
    ("servers", "traffic"), [(1, "1/2"), (2, "1"), (7, "13/2"), (30, "25"), (120, "110")]
)
def test_erlang_c_equals_the_exact_formula(servers: int, traffic: str) -> None:
    exact = exact_erlang_c(servers, Fraction(traffic))
    assert erlang_c(servers, float(Fraction(traffic))) == pytest.approx(float(exact), rel=1e-10)


def test_large_traffic_is_stable_where_the_textbook_formula_overflows() -> None:
    # 2,000 Erlangs: 2000^2050 / 2050! overflows any float; the recursion does not.
    with pytest.raises(OverflowError):
        _ = 2000.0**2050
    c = erlang_c(2050, 2000.0)
    assert 0.0 < c < 1.0
    # Log-space reference: C from B, with B computed by log-sum-exp of the Poisson terms.
    n, a = 2050, 2000.0
    logs = [k * math.log(a) - math.lgamma(k + 1) for k in range(n + 1)]
    top = max(logs)
    b = math.exp(logs[-1] - top) / sum(math.exp(x - top) for x in logs)
    assert erlang_b(n, a) == pytest.approx(b, rel=1e-9)
    assert c == pytest.approx(n * b / (n - a * (1 - b)), rel=1e-9)
    plan = staffing(2000 / 180, 180, target=0.8, threshold_seconds=20, max_occupancy=0.97)
    assert plan.traffic == pytest.approx(2000)
    assert plan.service_level >= 0.8
    # One agent fewer would miss the target (or the occupancy ceiling).
    fewer = plan.agents - 1
    assert fewer < math.ceil(2000 / 0.97) or service_level(fewer, 2000, 180, 20) < 0.8


def test_unstable_and_edge_cases() -> None:
    assert erlang_c(10, 10) == 1.0  # as many agents as Erlangs: everyone waits, forever
    assert service_level(10, 12, 180, 20) == 0.0
    assert average_speed_of_answer(10, 10, 180) == math.inf
    assert erlang_b(0, 5) == 1.0
    none = staffing(0, 180, target=0.8, threshold_seconds=20)
    assert (none.agents, none.service_level) == (0, 1.0)
    # The occupancy ceiling adds agents the service level alone would not need.
    free = staffing(100 / 1800, 180, target=0.5, threshold_seconds=20)
    capped = staffing(100 / 1800, 180, target=0.5, threshold_seconds=20, max_occupancy=0.7)
    assert capped.agents == math.ceil(10 / 0.7) > free.agents
    for bad, needle in (
        (lambda: staffing(1, 180, target=1.0, threshold_seconds=20), "target"),
        (lambda: staffing(1, 0, target=0.8, threshold_seconds=20), "AHT"),
        (lambda: staffing(1, 180, target=0.8, threshold_seconds=20, max_occupancy=0), "occupancy"),
        (lambda: staffing(1, 180, target=0.99, threshold_seconds=20, max_agents=50), "50 agents"),
        (lambda: erlang_b(-1, 1), "servers"),
        (lambda: erlang_c(3, -1), "traffic"),
    ):
        with pytest.raises(ValueError, match=needle):
            bad()
