"""Hostile and malformed input: every job is stored and read back exactly, or refused with
InvalidJobError before anything is written; and no job, however odd, stops a worker."""

from __future__ import annotations

import asyncio
import math
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import simplequeue as sq
import simplequeue.codec as codec_module
from simplequeue.codec import JSONB_MAX_BYTES, MAX_DATA_DEPTH, NUMERIC_MAX_DIGITS, encode_data
from simplequeue.validation import EARLIEST_TIME, LATEST_TIME, MAX_KEY_LENGTH
from tests.conftest import count, eventually, query

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HOSTILE_TEXT = [
    "'",
    '"',
    "\\",
    "'; DROP TABLE simplequeue.jobs; --",
    '"; DROP SCHEMA simplequeue CASCADE; --',
    "$$",
    "$1",
    "%s",
    "%(id)s",
    "{s}",
    "{}",
    "\\u0000",
    "\\\\u0000",
    "\\ud800",
    "\x00",
    "\ud800",
    "\udfff",
    "\U0001f418",
    "\u2028",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "\x1f",
    "\x7f",
    "\r\n",
    "1e+16",
    "NaN",
    "null",
    "/*",
    "*/",
    "\n",
    "ß",
    "ǅ",
    "İ",
]
"""SQL and JSON metacharacters, escapes that look like NULs, NULs, lone surrogates, and
characters that are awkward in one encoding or another."""

hostile_text = st.lists(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=6), max_size=6).map(
    "".join
)
plain_or_hostile_text = st.text(max_size=20) | hostile_text

EXTREME_FLOATS = [
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    1e16,
    -1e16,
    9007199254740993.0,
    1.2345678901234567e22,
    1e15,
    0.1,
    1e-7,
    123456789.12345679,
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**4299), max_value=10**4299)
    | st.floats()
    | st.sampled_from(EXTREME_FLOATS)
    | plain_or_hostile_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(plain_or_hostile_text, children, max_size=4)
    ),
    max_leaves=20,
)


def problems_with(value: Any) -> set[str]:
    """Why a value cannot be stored, as fragments of the message the library gives."""
    found: set[str] = set()

    def text(s: str) -> None:
        if "\x00" in s:
            found.add("NUL")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in s):
            found.add("surrogate")

    def walk(v: Any, depth: int) -> None:
        if depth > MAX_DATA_DEPTH:
            found.add("nested more than")
        if isinstance(v, str):
            text(v)
        elif isinstance(v, float) and not math.isfinite(v):
            found.add("JSON-serialisable")
        elif isinstance(v, list):
            for item in v:
                walk(item, depth + 1)
        elif isinstance(v, dict):
            for key, item in v.items():
                text(key)
                walk(item, depth + 1)

    walk(value, 0)
    return found


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (-0.0 and 0.0 are equal floats)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


async def store_or_refuse(
    queue: sq.SimpleQueue, dsn: str, build: Callable[[], sq.Job]
) -> sq.Job | InvalidJob:
    """Build and insert a job: the stored row read back, or the refusal (nothing written)."""
    before = count(dsn)
    try:
        job = build()
        job_id = await queue.insert_job(job)
    except sq.InvalidJobError as exc:
        assert count(dsn) == before, "a refused job left a row behind"
        return InvalidJob(str(exc))
    assert job_id == job.id
    assert count(dsn) == before + 1
    stored = await queue.get_job(job_id)
    assert stored is not None
    # Free any unique key again, so that a repeated example is not deduplicated.
    assert await queue.cancel_job(job_id)
    return stored


class InvalidJob(str):
    """The message of a refused job."""


# -- payloads ------------------------------------------------------------------------


@pytest.mark.slow
@SETTINGS
@given(data=json_values)
@example(data={"": [None, True, 0, -0.0, "", [], {}]})
@example(data={"big": 10**4299, "neg": -(10**4299), "floats": EXTREME_FLOATS})
@example(data=["\\u0000 is six characters", "C:\\u0000\\", "\\\\u0000"])
@example(data={"a\x00b": 1})
@example(data=["ok", "\ud83d\ude00"])  # a surrogate pair as two code points
async def test_payloads_round_trip_exactly_or_are_refused(
    queue: sq.SimpleQueue, dsn: str, data: Any
) -> None:
    expected = problems_with(data)
    result = await store_or_refuse(queue, dsn, lambda: sq.Job("payloads", data))
    if isinstance(result, InvalidJob):
        assert expected, f"refused a storable payload: {result}"
        assert any(fragment in result for fragment in expected), result
    else:
        assert not expected, f"stored a payload that should be refused ({expected})"
        assert same(result.data, data), (result.data, data)


@pytest.mark.parametrize("value", [*EXTREME_FLOATS, 1e300, -2.5e100, 7e22])
async def test_floats_at_the_limits_come_back_as_the_same_floats(
    queue: sq.SimpleQueue, dsn: str, value: float
) -> None:
    # jsonb prints 1e+16 as 10000000000000000: the library writes such floats out in full
    stored = await store_or_refuse(queue, dsn, lambda: sq.Job("floats", {"f": value}))
    assert not isinstance(stored, InvalidJob)
    assert type(stored.data["f"]) is float and stored.data["f"] == value
    text = query(dsn, "SELECT data->>'f' FROM simplequeue.jobs WHERE id = %s", [stored.id])[0][0]
    assert float(text) == value


async def test_negative_zero_comes_back_as_zero(queue: sq.SimpleQueue, dsn: str) -> None:
    # numeric has no negative zero: documented, and equal under == anyway
    stored = await store_or_refuse(queue, dsn, lambda: sq.Job("floats", -0.0))
    assert not isinstance(stored, InvalidJob)
    assert stored.data == 0.0 and math.copysign(1, stored.data) == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (float("nan"), "NaN and infinities"),
        ([float("inf")], "NaN and infinities"),
        ({"x": -float("inf")}, "NaN and infinities"),
        pytest.param(10**4300, "4300 digits", id="int-of-4301-digits"),
        ({1: "a"}, "int object key 1"),
        ({"1": "a", 1: "b"}, "int object key 1"),
        ({"ok": [{None: 1}]}, "NoneType object key None"),
        ({True: 1}, "bool object key True"),
        ({1.5: 1}, "float object key 1.5"),
        ({"s": "\ud800"}, "lone surrogate"),
        ({"\udfff": 1}, "lone surrogate"),
        ("a\x00b", "NUL"),
        ({"k\x00": 1}, "NUL"),
        ({1, 2}, "JSON-serialisable"),
        (b"bytes", "JSON-serialisable"),
        (object(), "JSON-serialisable"),
        (uuid.UUID(int=1), "JSON-serialisable"),
        (datetime(2030, 1, 1, tzinfo=UTC), "JSON-serialisable"),
    ],
)
async def test_unstorable_payloads_are_refused_clearly(
    queue: sq.SimpleQueue, dsn: str, data: Any, message: str
) -> None:
    result = await store_or_refuse(queue, dsn, lambda: sq.Job("refused", data))
    assert isinstance(result, InvalidJob) and message in result, result


async def test_circular_payloads_are_refused(queue: sq.SimpleQueue, dsn: str) -> None:
    loop: list[Any] = []
    loop.append(loop)
    looped: dict[str, Any] = {}
    looped["self"] = looped
    for data in (loop, looped):
        result = await store_or_refuse(queue, dsn, lambda data=data: sq.Job("refused", data))
        assert isinstance(result, InvalidJob) and "Circular reference" in result


def nested(depth: int, shape: str) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if shape == "list" or (shape == "mixed" and level % 2) else {"k": value}
    return value


@SETTINGS
@given(
    depth=st.integers(MAX_DATA_DEPTH - 3, MAX_DATA_DEPTH + 3) | st.integers(0, 3000),
    shape=st.sampled_from(["list", "dict", "mixed"]),
)
@example(depth=MAX_DATA_DEPTH, shape="list")
@example(depth=MAX_DATA_DEPTH + 1, shape="dict")
@example(depth=100_000, shape="list")
async def test_deep_nesting_is_stored_up_to_the_limit_and_refused_beyond(
    queue: sq.SimpleQueue, dsn: str, depth: int, shape: str
) -> None:
    data = nested(depth, shape)
    result = await store_or_refuse(queue, dsn, lambda: sq.Job("deep", data))
    if depth > MAX_DATA_DEPTH:
        assert isinstance(result, InvalidJob) and "nested more than 256 levels" in result
    else:
        assert not isinstance(result, InvalidJob), result
        assert same(result.data, data)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    data = ["[" * 5000, "{" * 5000, '"[{\\"' * 1000]
    assert encode_data(data).startswith('["[[[')


async def test_huge_strings_up_to_the_payload_limit(queue: sq.SimpleQueue, dsn: str) -> None:
    limit = queue.config.max_payload_bytes
    assert limit == 1024 * 1024
    at_limit = "x" * (limit - 2)  # the JSON quotes make it exactly `limit` bytes
    stored = await store_or_refuse(queue, dsn, lambda: sq.Job("big", at_limit))
    assert not isinstance(stored, InvalidJob) and stored.data == at_limit
    wide = "\U0001f418" * ((limit - 2) // 4)  # 4 bytes each in UTF-8
    stored = await store_or_refuse(queue, dsn, lambda: sq.Job("big", wide))
    assert not isinstance(stored, InvalidJob) and stored.data == wide
    before = count(dsn)
    for too_big in (at_limit + "x", wide + "\U0001f418", {"k": at_limit}):
        with pytest.raises(sq.InvalidJobError, match=r"bytes; the limit is 1048576"):
            await queue.insert_jobs([sq.Job("big", "fine"), sq.Job("big", too_big)])
    assert count(dsn) == before


@SETTINGS
@given(
    limit=st.integers(1, 5000),
    text=st.text(st.characters(codec="utf-8"), max_size=1500),
)
async def test_the_configured_payload_limit_counts_utf8_bytes(
    queue: sq.SimpleQueue, dsn: str, limit: int, text: str
) -> None:
    limited = sq.SimpleQueue(queue.pool, max_payload_bytes=limit)
    try:
        job = sq.Job("limited", {"t": text})
    except sq.InvalidJobError:
        assert "\x00" in text
        return
    size = len(job.encoded_data.encode("utf-8"))
    before = count(dsn)
    if size > limit:
        with pytest.raises(sq.InvalidJobError, match=f"{size} bytes; the limit is {limit} "):
            await limited.insert_jobs([sq.Job("limited", 1), job])
        assert count(dsn) == before
    else:
        assert await limited.insert_job(job) == job.id
        stored = await limited.get_job(job.id)
        assert stored is not None and stored.data == {"t": text}


def test_documents_over_the_jsonb_limit_are_refused_whatever_the_payload_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # jsonb refuses documents over 256 MiB (PostgreSQL: "string too long to represent as
    # jsonb string", "total size of jsonb array elements exceeds the maximum"), and a queue
    # may allow payloads that large. Scaled down here: building 256 MiB takes seconds.
    assert JSONB_MAX_BYTES == 268435455
    monkeypatch.setattr(codec_module, "JSONB_MAX_BYTES", 100_000)
    assert encode_data("x" * 99_000)
    with pytest.raises(sq.InvalidJobError, match="256 MiB jsonb limit"):
        sq.Job("big", "x" * 100_000)
    # many tiny values take far more room in jsonb (an entry, a header, padding) than in
    # JSON text, where "0," is two bytes
    assert encode_data([0] * 1_000)
    with pytest.raises(sq.InvalidJobError, match="holding up to 10001 values"):
        sq.Job("big", [0] * 10_000)


def test_integers_longer_than_numeric_allows_are_refused() -> None:
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # what a user would do to pass the 4300-digit guard
    try:
        assert encode_data(10 ** (NUMERIC_MAX_DIGITS - 1))  # 131072 digits: numeric's limit
        with pytest.raises(sq.InvalidJobError, match="more than 131072 digits"):
            sq.Job("ints", [1, 10**NUMERIC_MAX_DIGITS])
        assert encode_data(["9" * (NUMERIC_MAX_DIGITS + 5)])  # a string of digits is fine
    finally:
        sys.set_int_max_str_digits(previous)


async def test_tuples_are_stored_as_json_arrays(queue: sq.SimpleQueue, dsn: str) -> None:
    # JSON has arrays only: a tuple comes back as a list (documented)
    stored = await store_or_refuse(queue, dsn, lambda: sq.Job("tuples", {"t": (1, (2, "x"))}))
    assert not isinstance(stored, InvalidJob) and stored.data == {"t": [1, [2, "x"]]}


# -- queue names, unique keys, fingerprints --------------------------------------------


def key_problems(value: str | None, *, required: bool) -> set[str]:
    if value is None:
        return {"must be a non-empty string"} if required else set()
    found = set()
    if not value:
        found.add("must be a non-empty string")
    if "\x00" in value:
        found.add("NUL")
    try:
        if len(value.encode("utf-8")) > MAX_KEY_LENGTH:
            found.add("the limit is 1024 bytes")
    except UnicodeEncodeError:
        found.add("not valid unicode")
    return found


long_keys = st.text(min_size=200, max_size=1100).map(lambda s: s * 4)
keys = plain_or_hostile_text | long_keys


@SETTINGS
@given(queue_name=keys, unique_key=st.none() | keys, fingerprint=st.none() | keys)
@example(queue_name="\U0010ffff" * 256, unique_key="\U0010ffff" * 256, fingerprint="é" * 512)
@example(queue_name="q" * 1025, unique_key=None, fingerprint=None)
@example(queue_name="q", unique_key="\U0001f418" * 257, fingerprint=None)
@example(queue_name="'; DROP TABLE simplequeue.jobs; --", unique_key="$$", fingerprint="%s")
async def test_keys_round_trip_exactly_or_are_refused(
    queue: sq.SimpleQueue,
    dsn: str,
    queue_name: str,
    unique_key: str | None,
    fingerprint: str | None,
) -> None:
    expected = (
        key_problems(queue_name, required=True)
        | key_problems(unique_key, required=False)
        | key_problems(fingerprint, required=False)
    )
    result = await store_or_refuse(
        queue,
        dsn,
        lambda: sq.Job(queue_name, {}, unique_key=unique_key, fingerprint=fingerprint),
    )
    if isinstance(result, InvalidJob):
        assert expected, f"refused storable keys: {result}"
        assert any(fragment in result for fragment in expected), result
        return
    assert not expected, f"stored keys that should be refused ({expected})"
    assert (result.queue, result.unique_key, result.fingerprint) == (
        queue_name,
        unique_key,
        fingerprint,
    )
    if unique_key is not None:  # the key and fingerprint work as parameters too
        again = await queue.insert_job(sq.Job(queue_name, 1, unique_key=unique_key))
        assert again is not None
        assert await queue.cancel_job_by_unique_key(unique_key) is True
    if fingerprint is not None:
        assert await queue.cancel_jobs_by_fingerprint(fingerprint) == 0  # already cancelled


# -- run_at ----------------------------------------------------------------------------


def offset(td: timedelta) -> tzinfo:
    return timezone(td)


odd_offsets = st.timedeltas(
    min_value=timedelta(hours=-23, minutes=-59, seconds=-59),
    max_value=timedelta(hours=23, minutes=59, seconds=59),
).map(offset)
round_offsets = st.integers(-16 * 60, 16 * 60).map(lambda m: timezone(timedelta(minutes=m)))
zones = st.timezones() | odd_offsets | round_offsets | st.just(UTC)


def time_problems(when: datetime) -> set[str]:
    off = when.utcoffset()
    assert off is not None
    if off % timedelta(seconds=1) or abs(off) >= timedelta(hours=16):
        return {"UTC offset"}
    if not EARLIEST_TIME <= when <= LATEST_TIME:
        return {"out of range"}
    return set()


@SETTINGS
@given(when=st.datetimes(timezones=zones))
@example(when=datetime.min.replace(tzinfo=UTC))
@example(when=datetime.max.replace(tzinfo=UTC))
@example(when=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))
@example(when=datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-5))))
@example(when=EARLIEST_TIME)
@example(when=LATEST_TIME)
@example(when=datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=15, minutes=59, seconds=59))))
@example(when=datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=16))))
@example(when=datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))))
@example(when=datetime(2030, 1, 1, tzinfo=timezone(timedelta(seconds=1, microseconds=1))))
@example(when=datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30, seconds=17))))
async def test_run_at_round_trips_exactly_or_is_refused(
    queue: sq.SimpleQueue, dsn: str, when: datetime
) -> None:
    expected = time_problems(when)
    result = await store_or_refuse(queue, dsn, lambda: sq.Job("timed", {}, run_at=when))
    if isinstance(result, InvalidJob):
        assert expected, f"refused a storable run_at: {result}"
        assert any(fragment in result for fragment in expected), result
    else:
        assert not expected, f"stored a run_at that should be refused ({expected})"
        # The same instant, the offset aside. Compared in UTC: == across zones is False for
        # times in a DST gap or fold (PEP 495), although utcoffset() says which instant it is.
        assert result.run_at is not None
        assert result.run_at.astimezone(UTC) == when.astimezone(UTC)


async def test_reschedule_and_retry_at_refuse_the_same_times(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    job_id = await queue.insert_job(sq.Job("timed", {}))
    assert job_id is not None
    bad = [
        datetime.min.replace(tzinfo=UTC),
        datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=20))),
        datetime(2030, 1, 1, tzinfo=timezone(timedelta(microseconds=1))),
    ]
    for when in bad:
        with pytest.raises(sq.InvalidArgumentError, match=r"UTC offset|out of range"):
            await queue.reschedule_job(job_id, when)
        with pytest.raises(sq.InvalidJobError, match=r"UTC offset|out of range"):
            sq.JobResult.retry_at(when)
    assert count(dsn, "run_at <= now()") == 1


# -- workers ---------------------------------------------------------------------------


HOSTILE_QUEUES = [
    "plain",
    "'; DROP TABLE simplequeue.jobs; --",
    'q"uote\\back',
    "\U0001f418 zażółć \u2028",
    "multi\nline",
    "x" * MAX_KEY_LENGTH,
]


def hostile_payloads() -> Iterator[Any]:
    yield nested(MAX_DATA_DEPTH, "mixed")
    yield "x" * (1024 * 1024 - 2)
    yield 10**4299
    yield {"floats": EXTREME_FLOATS, "neg": -0.0}
    yield {"'; DROP TABLE simplequeue.jobs; --": "\\u0000", "\u2028": "\ufeff\uffff"}
    yield ["\x01\x1f\x7f", "\U0010ffff" * 1000, {"": {"": [[], {}]}}]
    yield {"C:\\u0000": "\\\\u0000", "%s": "%(id)s", "{s}": "$1"}
    yield None
    yield ""


class Verdicts(sq.Handler):
    """Ends each hostile job in a different way, echoing the payload where it can."""

    QUEUE = "plain"
    seen: list[Any]

    def __init__(self, queue: str) -> None:
        self.QUEUE = queue  # type: ignore[misc]
        self.seen = []

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult | None:
        self.seen.append(job.data)
        kind = job.priority % 6
        text = str(job.data)[:5000] if not isinstance(job.data, int) else "a huge integer"
        if kind == 0:
            return None
        if kind == 1:
            raise ValueError(f"cannot handle {text}")
        if kind == 2:
            return sq.JobResult.failed(text)
        if kind == 3:
            return sq.JobResult.critical(text)
        if kind == 4:
            return sq.JobResult.unprocessable(text)
        return sq.JobResult.cancel()


async def test_a_worker_survives_a_batch_of_hostile_jobs(queue: sq.SimpleQueue, dsn: str) -> None:
    import pydantic

    class Mail(pydantic.BaseModel):
        to: str

    class StrictMail(sq.Handler):
        QUEUE = "strict mail ' \""
        Payload = Mail

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    class Slow(sq.Handler):
        QUEUE = "slow \U0001f418"
        timeout = 0.05

        def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:  # sync: in a thread
            import time

            time.sleep(0.2)

    handlers = {name: Verdicts(name) for name in HOSTILE_QUEUES}
    for handler in handlers.values():
        queue.register_handler(handler)
    queue.register_handler(StrictMail())
    queue.register_handler(Slow())
    jobs = []
    for index, (name, data) in enumerate(
        (name, data) for name in HOSTILE_QUEUES for data in hostile_payloads()
    ):
        jobs.append(sq.Job(name, data, priority=index, max_attempts=2, unique_key=f"{index}'"))
    jobs += [sq.Job(StrictMail.QUEUE, data, max_attempts=1) for data in hostile_payloads()]
    jobs += [sq.Job(Slow.QUEUE, data, max_attempts=1) for data in list(hostile_payloads())[:2]]
    ids = await queue.insert_jobs(jobs)
    assert all(ids) and count(dsn) == len(jobs)

    await queue.start()
    terminal = "status NOT IN ('pending', 'running')"
    await eventually(lambda: count(dsn, terminal) == len(jobs), timeout=30)

    statuses = dict(query(dsn, "SELECT status, count(*) FROM simplequeue.jobs GROUP BY status"))
    assert set(statuses) <= {
        "completed",
        "failed",
        "critical_failure",
        "unprocessable",
        "cancelled",
    }
    assert statuses["unprocessable"] >= len(list(hostile_payloads()))  # the pydantic ones
    assert count(dsn, "status = 'failed' AND queue = %s", [Slow.QUEUE]) == 2
    # every handler saw exactly the data that was inserted, through the claim's own decoding
    for name, handler in handlers.items():
        wanted = list(hostile_payloads())
        assert len(handler.seen) >= len(wanted), name
        for data in wanted:
            assert any(same(seen, data) for seen in handler.seen), (name, str(data)[:80])

    # ... and the worker still works
    done = asyncio.Event()

    class Normal(sq.Handler):
        QUEUE = "normal"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            done.set()

    queue.register_handler(Normal())
    normal = await queue.insert_job(sq.Job("normal", {"n": 1}))
    await asyncio.wait_for(done.wait(), 10)
    await eventually(lambda: count(dsn, "id = %s AND status = 'completed'", [normal]))
    assert queue.running


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        (ValueError("nul \x00 inside"), "nul \\x00 inside"),
        (ValueError("lone \ud800 surrogate"), "lone \\ud800 surrogate"),
        (ValueError("long " + "x" * 100_000), "more]"),
        (Unprintable(), "could not be rendered"),
    ],
)
async def test_a_handler_error_with_unstorable_text_still_ends_the_job(
    queue: sq.SimpleQueue, dsn: str, error: Exception, stored: str
) -> None:
    class Echo(sq.Handler):
        QUEUE = "echo"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            if job.data == "bad":
                raise error

    queue.register_handler(Echo())
    await queue.start()
    bad = await queue.insert_job(sq.Job("echo", "bad", max_attempts=1))
    await eventually(lambda: count(dsn, "id = %s AND status = 'failed'", [bad]), timeout=5)
    ((last_error,),) = query(dsn, "SELECT last_error FROM simplequeue.jobs WHERE id = %s", [bad])
    assert stored in last_error
    assert len(last_error) <= 8192
    good = await queue.insert_job(sq.Job("echo", "good"))
    await eventually(lambda: count(dsn, "id = %s AND status = 'completed'", [good]), timeout=5)


# -- batches: every column through the array INSERT, as a single insert stores it -------

storable_text = plain_or_hostile_text.filter(lambda s: not key_problems(s, required=True))


@st.composite
def storable_jobs(draw: st.DrawFn) -> sq.Job:
    """A job with hostile but storable values in every column a batch sends as arrays."""
    data = draw(json_values.filter(lambda v: not problems_with(v)))
    when = draw(st.none() | st.datetimes(timezones=zones).filter(lambda w: not time_problems(w)))
    unique_key = draw(st.none() | storable_text)
    return sq.Job(
        draw(storable_text),
        data,
        unique_key=unique_key,
        fingerprint=draw(st.none() | storable_text),
        concurrency_key=draw(st.none() | storable_text),
        run_at=when,
        max_attempts=draw(st.integers(1, 2**31 - 1)),
        priority=draw(st.integers(-(2**31) + 1, 2**31 - 1)),
        timeout=draw(st.none() | st.floats(1e-3, 3e7)),
        unique_for=(
            None
            if unique_key is None
            else draw(st.none() | st.just(sq.FOREVER) | st.floats(1, 1e6))
        ),
    )


COMPARED = ("queue", "unique_key", "fingerprint", "concurrency_key", "max_attempts", "priority")


@pytest.mark.slow
@settings(SETTINGS, max_examples=40)
@given(batch=st.tuples(storable_jobs(), storable_jobs(), storable_jobs()))
async def test_a_batch_stores_hostile_values_as_given(
    queue: sq.SimpleQueue, dsn: str, batch: tuple[sq.Job, ...]
) -> None:
    """A batch below the COPY size (and any batch with unique keys) is one INSERT of
    arrays, whose literals the library writes itself: every value comes back as given."""
    for job in batch:  # a key of its own in each example: one stored before is taken
        if job.unique_key is not None:
            job.unique_key = f"{uuid.uuid4().hex}{job.unique_key}"
    ids = await queue.insert_jobs(list(batch))
    assert ids == [job.id for job in batch]
    for job in batch:
        stored = await queue.get_job(job.id)
        assert stored is not None
        assert [getattr(stored, a) for a in COMPARED] == [getattr(job, a) for a in COMPARED]
        assert same(stored.data, job.data)
        assert stored.timeout == job.timeout and stored.unique_for == job.unique_for
        if job.run_at is None:
            assert stored.run_at is not None
        else:
            assert stored.run_at is not None
            assert stored.run_at.astimezone(UTC) == job.run_at.astimezone(UTC)
