"""Job ids without a database: UUIDv7 that grow whatever the clock does, built without
uuid.UUID's constructor yet alike to any UUID in every way code may use one."""

from __future__ import annotations

import copy
import itertools
import pickle
import uuid
from collections.abc import Callable

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.adapt import PyFormat, Transformer

from simplequeue.job import IdClock, new_job_id

MS = 1_000_000
"""A millisecond, in the clock's nanoseconds."""

RAND_B = 2**62 - 1


def _counter(value: uuid.UUID) -> int:
    """The 74-bit counter an id carries (rand_a, then rand_b)."""
    return (value.int >> 64 & 0xFFF) << 62 | (value.int & RAND_B)


def _entropy(kind: str, draw: Callable[[int], int]) -> Callable[[int], bytes]:
    """Counters drawn at random, at their largest, or a few ids short of a carry."""

    def entropy(size: int) -> bytes:
        if kind == "largest":
            counter = 2**73 - 1
        elif kind == "carry":
            counter = draw(2**11 - 1) << 62 | (RAND_B - draw(3))
        else:
            counter = draw(2**73 - 1)
        return (counter << 7).to_bytes(size, "big")

    return entropy


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.sampled_from([0, 0, 0, 1, MS, 5 * MS, -1, -MS, -3_600_000 * MS]), max_size=60
    ),
    kind=st.sampled_from(["random", "largest", "carry"]),
    seed=st.randoms(use_true_random=False),
)
def test_ids_grow_whatever_the_clock_does(steps: list[int], kind: str, seed: object) -> None:
    """Stalled, stepped back (by a tick, a millisecond, an hour), or leaping: every id is
    greater than the one before, a well-formed UUIDv7, and the UUID its integer makes."""
    now = [1_700_000_000_000 * MS]
    pending = iter(steps)

    def clock() -> int:
        now[0] += next(pending, 0)
        return now[0]

    draw = seed.randint  # type: ignore[attr-defined]
    ids = IdClock(clock=clock, entropy=_entropy(kind, lambda top: draw(0, top)))
    made = [ids.next() for _ in range(len(steps) + 1)]
    assert made == sorted(set(made))
    for value in made:
        assert value.version == 7 and value.variant == uuid.RFC_4122
        assert value == uuid.UUID(int=value.int) == uuid.UUID(str(value))
    for before, after in itertools.pairwise(made):
        if before.int >> 80 == after.int >> 80:  # within one millisecond: the next count
            assert _counter(after) == _counter(before) + 1


def test_an_id_is_alike_to_any_uuid() -> None:
    made = new_job_id()
    usual = uuid.UUID(str(made))
    assert type(made) is uuid.UUID and made.is_safe is uuid.SafeUUID.unknown
    assert made == usual and hash(made) == hash(usual) and {made: 1}[usual] == 1
    assert str(made) == str(usual) and repr(made) == repr(usual)
    assert made.bytes == usual.bytes and made.hex == usual.hex and made.fields == usual.fields
    assert usual < uuid.UUID(int=made.int + 1) and not made < usual
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(made, protocol))
        assert again == made and again.is_safe is made.is_safe
    assert copy.copy(made) == made == copy.deepcopy(made)
    adapt = Transformer()
    for format in (PyFormat.TEXT, PyFormat.BINARY):
        dumped = adapt.get_dumper(made, format).dump(made)
        assert dumped == adapt.get_dumper(usual, format).dump(usual)
    assert psycopg.sql.Literal(made).as_string(None) == psycopg.sql.Literal(usual).as_string(None)
