"""The job data encoder's own state, without a database: each thread keeps one C encoder,
whose record of the containers it is inside must never outlive a call (an error midway
included), be shared between threads, or be confused by a call made from within a call."""

from __future__ import annotations

import enum
import json
import threading
import time
from collections import OrderedDict
from typing import Any

import pytest

import simplequeue as sq
from simplequeue.codec import encode_data

REFERENCE = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
"""What job data was encoded with before the encoder was kept between calls."""


class Colour(enum.IntEnum):
    RED = 1


class Size(enum.StrEnum):
    LARGE = "large"


class Ratio(float, enum.Enum):
    HALF = 0.5


class Loud(str):
    def __str__(self) -> str:
        return "LOUD"


class Odd(int):
    def __repr__(self) -> str:
        return "odd"

    __str__ = __repr__


class Skewed(float):
    def __repr__(self) -> str:
        return "skewed"

    __str__ = __repr__


class Listing(list[Any]):
    pass


class Mapping(dict[str, Any]):
    pass


class Renamed(dict[str, Any]):
    """Its items are not its keys: JSON follows items()."""

    def items(self) -> Any:
        return [("renamed", 1)]


SUBCLASSES = [
    Colour.RED,
    Size.LARGE,
    Ratio.HALF,
    Loud("text"),
    {Loud("key"): Odd(3)},
    Odd(7),
    Skewed(1.5),
    Listing([1, Listing([2])]),
    Mapping(a=Mapping(b=[True, None])),
    OrderedDict(z=1, a=2),
    Renamed(a=2),
    (1, (2, 3)),
    10**100,
    -(2**63),
    True,
]


@pytest.mark.parametrize("value", SUBCLASSES, ids=repr)
def test_subclasses_and_enums_encode_as_the_reference_encoder(value: Any) -> None:
    assert encode_data(value) == REFERENCE.encode(value)
    assert encode_data([value, {"v": value}]) == REFERENCE.encode([value, {"v": value}])


def _nan(shared: list[Any]) -> None:
    shared[1] = float("nan")


def _unencodable(shared: list[Any]) -> None:
    shared[1] = object()


def _circular(shared: list[Any]) -> None:
    shared[1] = shared


def _interrupted(shared: list[Any]) -> None:
    class Interrupting(dict[str, Any]):
        def items(self) -> Any:
            raise KeyboardInterrupt

    shared[1] = Interrupting(k=1)  # an empty one is written "{}" unasked


@pytest.mark.parametrize("spoil", [_nan, _unencodable, _circular, _interrupted])
def test_a_value_refused_midway_encodes_once_mended_in_place(spoil: Any) -> None:
    """The encoder was inside `shared` (and its parent) when it failed: mended, the same
    objects encode, twice over, and not as a circular reference."""
    shared: list[Any] = [1, 2, {"deep": [3]}]
    payload = {"a": shared, "b": [shared]}
    spoil(shared)
    with pytest.raises((sq.InvalidJobError, KeyboardInterrupt)):
        encode_data(payload)
    shared[1] = 2
    assert encode_data(payload) == REFERENCE.encode(payload)
    assert encode_data([payload, payload]) == REFERENCE.encode([payload, payload])


class Yielding(dict[str, Any]):
    """Lets another thread run while it is being encoded."""

    def items(self) -> Any:
        time.sleep(0)
        return super().items()


def test_threads_encoding_one_value_at_once_each_get_its_text() -> None:
    shared = [list(range(20)) for _ in range(20)]
    payload = {"x": shared, "y": Yielding(y=shared), "z": [{"s": "é" * 10}] * 20}
    expected = REFERENCE.encode(payload)
    start = threading.Barrier(4)
    wrong: list[str] = []

    def encode() -> None:
        start.wait()
        for _ in range(300):
            try:
                text = encode_data(payload)
            except sq.InvalidJobError as exc:  # "Circular reference": another's record
                text = str(exc)
            if text != expected:
                wrong.append(text)

    threads = [threading.Thread(target=encode) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_data_encoded_from_within_an_encoding_is_encoded_whole() -> None:
    """A mapping whose items() builds a job (its data encoded while the outer data is half
    encoded, in the same thread): both texts are whole, and the values they share are no
    circular reference to either."""
    shared = {"n": [1, 2]}
    inner: list[sq.Job] = []

    class Building(dict[str, Any]):
        def items(self) -> Any:
            inner.append(sq.Job("q", {"shared": shared, "again": [shared]}))
            return super().items()

    payload = {"first": shared, "built": Building(k=shared), "last": shared}
    assert encode_data(payload) == REFERENCE.encode(payload)
    assert inner[0].encoded_data == REFERENCE.encode({"shared": shared, "again": [shared]})
    with pytest.raises(sq.InvalidJobError, match="NaN"):  # an inner failure, then the outer
        encode_data(Building(k=float("nan")))
    assert encode_data(payload) == REFERENCE.encode(payload)
