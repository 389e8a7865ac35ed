"""The Maglev table: every slot filled, backends share it evenly, and adding or removing one of
N backends moves about 1/N of new flows (and nothing else)."""

import random

import pytest

from controller import maglev
from controller.lb_abi import LB_NO_BACKEND, LB_RING_SIZE

SMALL = 4099  # a prime, for fast tests; the real table is LB_RING_SIZE


def backends(n: int) -> dict[int, str]:
    return {i: f"10.9.0.{i + 1}" for i in range(n)}


def moved(a: list[int], b: list[int]) -> float:
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(a)


def test_every_slot_has_a_backend_and_each_backend_gets_an_equal_share():
    table = maglev.build_table(backends(3), LB_RING_SIZE)
    assert len(table) == LB_RING_SIZE
    counts = [table.count(i) for i in range(3)]
    assert sum(counts) == LB_RING_SIZE
    assert max(counts) - min(counts) <= 1


def test_no_backend_gives_an_empty_table():
    assert set(maglev.build_table({}, SMALL)) == {LB_NO_BACKEND}


@pytest.mark.parametrize("n", [3, 5, 10])
def test_removing_one_of_n_backends_moves_about_one_nth_of_the_slots(n):
    full = maglev.build_table(backends(n), SMALL)
    less = backends(n)
    del less[n // 2]
    after = maglev.build_table(less, SMALL)
    # The removed backend's slots must move; Maglev moves a few others too (paper: ~1-2%).
    assert all(after[s] != n // 2 for s in range(SMALL))
    assert 1 / n <= moved(full, after) <= 1 / n + 0.05


@pytest.mark.parametrize("n", [3, 5, 10])
def test_adding_a_backend_moves_about_one_in_n_plus_one_of_the_slots(n):
    before = maglev.build_table(backends(n), SMALL)
    after = maglev.build_table(backends(n + 1), SMALL)
    assert abs(moved(before, after) - 1 / (n + 1)) <= 0.05


def test_the_table_does_not_depend_on_the_order_backends_are_given():
    b = backends(4)
    assert maglev.build_table(b, SMALL) == maglev.build_table(dict(reversed(b.items())), SMALL)


def test_new_flows_spread_over_backends():
    table = maglev.build_table(backends(3), SMALL)
    rnd = random.Random(7)
    picks = [maglev.pick(table, f"192.0.2.{rnd.randrange(1, 255)}", rnd.randrange(1024, 65535),
                         443) for _ in range(3000)]
    for i in range(3):
        assert 800 < picks.count(i) < 1200


def test_flow_hash_is_a_known_value():
    # Pinned so a change to either implementation (here or bpf/mptcp_lb.c) is noticed;
    # tests/bpf/test_lb.py checks the XDP program agrees with this function.
    assert maglev.flow_hash("192.0.2.10", 40000, 80) == 0x8f2b77bf
    assert maglev.flow_hash("2001:db8::10", 40000, 80) == 0x72bba5d5
    assert maglev.flow_hash("192.0.2.10", 40001, 80) != 0x8f2b77bf


def test_a_hash_maps_to_a_slot_by_scaling_not_division():
    assert maglev.slot(0) == 0
    assert maglev.slot(0xFFFFFFFF) == maglev.LB_RING_SIZE - 1
    assert maglev.slot(1 << 31) == maglev.LB_RING_SIZE // 2
