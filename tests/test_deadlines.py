"""The sans-IO deadline heap: earliest first, one deadline per key, bounded whatever the churn."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from qp2p._deadlines import SLACK, Deadlines


def test_due_keys_come_earliest_first_and_lose_their_deadline() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("b", 2.0)
    deadlines.set("a", 1.0)
    deadlines.set("c", 3.0)
    assert deadlines.earliest() == 1.0
    assert deadlines.pop_due(2.5) == [("a", 1.0), ("b", 2.0)]
    assert len(deadlines) == 1 and "a" not in deadlines and deadlines.get("c") == 3.0
    assert deadlines.pop_due(2.9) == []
    assert deadlines.pop_due(3.0) == [("c", 3.0)]
    assert deadlines.earliest() is None and len(deadlines) == 0


def test_a_deadline_moved_later_is_not_due_at_its_old_time() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("quic", 1.0)
    deadlines.set("quic", 5.0)
    assert deadlines.get("quic") == 5.0
    assert deadlines.earliest() == 1.0  # a lower bound: the entry is pushed again when it comes up
    assert deadlines.pop_due(1.0) == []
    assert deadlines.earliest() == 5.0
    assert deadlines.pop_due(5.0) == [("quic", 5.0)]


def test_a_deadline_moved_earlier_is_due_at_the_new_time_once() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("quic", 5.0)
    deadlines.set("quic", 1.0)
    assert deadlines.pop_due(1.0) == [("quic", 1.0)]
    assert deadlines.pop_due(10.0) == []  # the entry at 5.0 went stale


def test_a_discarded_key_is_never_due() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("keep_alive", 1.0)
    deadlines.set("linger", 2.0)
    deadlines.discard("keep_alive")
    deadlines.discard("never set")
    assert deadlines.pop_due(10.0) == [("linger", 2.0)]


def test_churn_of_rearms_and_discards_cannot_grow_the_heap() -> None:
    deadlines: Deadlines[int] = Deadlines()
    rng = random.Random(13)
    links = 200
    now = 0.0
    for step in range(20_000):
        key = rng.randrange(links)
        if rng.random() < 0.1:
            deadlines.discard(key)
        else:
            deadlines.set(key, now + rng.uniform(0.0, 30.0))  # earlier or later than before
        if step % 100 == 0:
            now += 0.5
            deadlines.pop_due(now)
        assert deadlines.heap_size <= 2 * len(deadlines) + SLACK
    assert len(deadlines) <= links
    for key in range(links):  # every link closes
        deadlines.discard(key)
    assert len(deadlines) == 0 and deadlines.heap_size <= SLACK
    assert deadlines.earliest() is None and deadlines.heap_size == 0


def test_clear_forgets_everything() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.set("a", 1.0)
    deadlines.clear()
    assert len(deadlines) == 0 and deadlines.heap_size == 0 and deadlines.pop_due(2.0) == []


operations = st.lists(
    st.tuples(
        st.sampled_from(["set", "discard", "pop"]),
        st.integers(0, 7),
        st.floats(0.0, 100.0, allow_nan=False),
    ),
    max_size=200,
)


@given(operations)
def test_behaves_as_a_dict_of_deadlines(ops: list[tuple[str, int, float]]) -> None:
    """Against a plain dict: due keys are exactly those at or before ``now``, in deadline order."""
    deadlines: Deadlines[int] = Deadlines()
    model: dict[int, float] = {}
    for op, key, value in ops:
        if op == "set":
            deadlines.set(key, value)
            model[key] = value
        elif op == "discard":
            deadlines.discard(key)
            model.pop(key, None)
        else:
            due = deadlines.pop_due(value)
            assert sorted(due) == sorted((k, at) for k, at in model.items() if at <= value)
            assert [at for _, at in due] == sorted(at for _, at in due)
            for k, _ in due:
                del model[k]
        assert len(deadlines) == len(model)
        earliest = deadlines.earliest()
        assert (earliest is None) == (not model)
        assert earliest is None or earliest <= min(model.values())
        assert deadlines.heap_size <= 2 * len(model) + SLACK
