"""Malformed Graph and Connect answers, fuzzed: the bad user is skipped, the rest come through.

Graph's getPresencesByUserId and Connect's presence reads and directory pages are served by an
``httpx.MockTransport`` whose answers hypothesis draws: records without ids or availability,
values of the wrong JSON type, unknown presence values, huge strings, truncated JSON, bodies
that are not JSON at all, and pages of mixed good and bad contacts. The adapters must never
raise anything but the PresencectlError family, must keep every good record, and must say
(warning, or ``failures`` for Connect reads) what they skipped. The mapping layer must turn any
value into a target or "unaltered", never an exception.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from fakes import FakeClock
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from presencectl.connect import ConnectClient
from presencectl.connect import presence as connect_presence
from presencectl.connect.directory import list_contacts
from presencectl.connect.feed import parse_event
from presencectl.errors import PresencectlError
from presencectl.graph.client import GraphClient, RetryPolicy
from presencectl.graph.presence import get_presences
from presencectl.graph.ratelimit import RateLimiter
from presencectl.graph.tokens import AccessToken
from presencectl.mapping import UNALTERED, Mapping, TeamsStatus

# The huge bodies below make hypothesis warn about the size of their repr; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)
presence_word = st.one_of(
    st.sampled_from(["Available", "busy", "DoNotDisturb", "InACall", "offline", "Wobbly", ""]),
    st.text(max_size=30),
    st.just("X" * 100_000),  # a huge value
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def graph_client(handler: Any) -> GraphClient:
    clock = FakeClock()
    return GraphClient(
        "https://graph.test/v1.0",
        lambda force_refresh=False: AccessToken("t", 4_000_000_000.0),
        transport=httpx.MockTransport(handler),
        limiter=RateLimiter(clock=clock, sleep=clock.sleep),
        retry=RetryPolicy(max_attempts=2, backoff_base=0.0),
        now=clock,
    )


# -- Graph getPresencesByUserId ------------------------------------------------------------------


@st.composite
def graph_record(draw: st.DrawFn, user_id: str) -> tuple[dict[str, Any] | Any, bool]:
    """One presence record for ``user_id`` and whether the adapter must keep it."""
    kind = draw(st.sampled_from(["good", "good", "no_id", "no_avail", "bad_types", "junk"]))
    if kind == "junk":
        return draw(json_value.filter(lambda v: not isinstance(v, dict))), False
    record: dict[str, Any] = {
        "id": user_id,
        "availability": draw(presence_word),
        "activity": draw(st.one_of(presence_word, st.none(), json_value)),
    }
    if draw(st.booleans()):
        record["outOfOfficeSettings"] = draw(
            st.one_of(json_value, st.fixed_dictionaries({"isOutOfOffice": json_value}))
        )
    if draw(st.booleans()):
        record["sequenceNumber"] = draw(json_value)
    for key, value in draw(st.dictionaries(st.text(max_size=8), json_value, max_size=2)).items():
        record.setdefault(key, value)
    if kind == "no_id":
        record.pop("id")
        return record, False
    if kind == "no_avail":
        record.pop("availability")
        return record, False
    if kind == "bad_types":
        field = draw(st.sampled_from(["id", "availability"]))
        record[field] = draw(json_value.filter(lambda v: not isinstance(v, str)))
        return record, False
    return record, True


@st.composite
def graph_answers(draw: st.DrawFn) -> tuple[list[str], list[Any], set[str]]:
    ids = [f"u{i}" for i in range(draw(st.integers(1, 12)))]
    records: list[Any] = []
    good: set[str] = set()
    for user_id in ids:
        if draw(st.integers(0, 9)) == 0:
            continue  # Graph left a user out entirely
        record, keep = draw(graph_record(user_id))
        records.append(record)
        if keep:
            good.add(user_id)
    return ids, draw(st.permutations(records)), good


@FUZZ
@given(answer=graph_answers())
def test_graph_bad_records_are_skipped_and_the_rest_kept(
    answer: tuple[list[str], list[Any], set[str]], caplog: pytest.LogCaptureFixture
) -> None:
    ids, records, good = answer

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"value": records})

    async def go() -> Any:
        async with graph_client(handler) as client:
            return await get_presences(client, ids)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = run(go())
    assert set(result) == good
    for user_id in good:
        assert isinstance(result[user_id].availability, str)
        assert isinstance(result[user_id].activity, str)
    bad_records = [
        r for r in records
        if isinstance(r, dict) and not (isinstance(r.get("id"), str) and r["id"] in good)
    ]  # fmt: skip
    if bad_records:  # every skipped record is named in a warning
        assert any(r.levelno == logging.WARNING for r in caplog.records)


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=300),
        json_value.map(lambda v: json.dumps(v).encode()),
        st.just(b'{"value": [{"id": "u0", "availability": "Busy", "activ'),  # truncated
        st.just(b'{"value": ' + b"[" * 10_000),  # deeply nested garbage
        st.just(json.dumps({"value": [{"id": "u0", "availability": "A" * 2_000_000}]}).encode()),
    ),
    status=st.sampled_from([200, 200, 200, 400, 404, 500]),
)
@example(body=b"", status=200)
def test_graph_malformed_bodies_never_raise_unhandled(body: bytes, status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})

    async def go() -> Any:
        async with graph_client(handler) as client:
            return await get_presences(client, ["u0", "u1"])

    try:
        result = run(go())
    except PresencectlError:
        assert status != 200  # a 200 is never an error, whatever its body
        return
    assert set(result) <= {"u0", "u1"}


def test_graph_one_bad_chunk_does_not_lose_the_other_chunks() -> None:
    """Two chunks: the first answer is truncated, the second is fine."""

    def handler(request: httpx.Request) -> httpx.Response:
        ids = json.loads(request.content)["ids"]
        if "u0" in ids:
            return httpx.Response(200, content=b'{"value": [{"id": "u0", "avail')
        return httpx.Response(
            200,
            json={"value": [{"id": i, "availability": "Busy", "activity": "InACall"} for i in ids]},
        )

    async def go() -> Any:
        async with graph_client(handler) as client:
            return await get_presences(client, [f"u{i}" for i in range(6)], chunk_size=3)

    assert set(run(go())) == {"u3", "u4", "u5"}


# -- Connect presence and directory ----------------------------------------------------------------

LOGIN = "https://login.connect.test"
API = "https://api.connect.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def connect_client(handler: Any) -> ConnectClient:
    def routed(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/user/connect/token"):
            return httpx.Response(
                200, json={"access_token": "ct", "token_type": "Bearer", "expires_in": 3600}
            )
        result: httpx.Response = handler(request)
        return result

    clock = Clock()
    return ConnectClient(
        LOGIN,
        API,
        "client-1",
        "s3cret",
        transport=httpx.MockTransport(routed),
        sleep=clock.sleep,
        clock=clock,
        max_attempts=2,
    )


connect_answer = st.one_of(
    st.builds(lambda v: ("good", json.dumps({"presence": v}).encode()),
              st.sampled_from(["available", "onphone", "agent_busy", "brand_new_status"])),
    st.builds(lambda v: ("good", json.dumps({"presence": v, "extra": [1]}).encode()),
              st.text(min_size=1, max_size=40)),
    st.builds(lambda b: ("bad", json.dumps(b).encode()),
              json_value.filter(lambda v: not (isinstance(v, dict) and isinstance(
                  v.get("presence"), str) and v.get("presence")))),
    st.just(("bad", b'{"presence": "onph')),
    st.just(("bad", b"<html>502 Bad Gateway</html>")),
    st.just(("bad", b'{"presence": ' + b"[" * 100_000)),  # nesting deeper than json's stack
    st.just(("good", json.dumps({"presence": "busy", "pad": "x" * 1_000_000}).encode())),
)  # fmt: skip


@FUZZ
@given(answers=st.lists(connect_answer, min_size=1, max_size=10))
def test_connect_bad_presence_answers_are_failures_not_crashes(
    answers: list[tuple[str, bytes]],
) -> None:
    by_user = {f"c{i}": a for i, a in enumerate(answers)}

    def handler(request: httpx.Request) -> httpx.Response:
        user = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, content=by_user[user][1])

    async def go() -> Any:
        async with connect_client(handler) as client:
            return await connect_presence.get_presences(client, list(by_user))

    reads = run(go())
    good = {u for u, (kind, _) in by_user.items() if kind == "good"}
    assert set(reads.presences) == good
    assert set(reads.failures) == set(by_user) - good
    assert all(isinstance(e, PresencectlError) for e in reads.failures.values())


@st.composite
def contact_pages(draw: st.DrawFn) -> tuple[list[bytes], set[str]]:
    """Directory pages with good and bad contacts; the ids the adapter must return."""
    n_pages = draw(st.integers(1, 4))
    pages: list[bytes] = []
    good: set[str] = set()
    serial = 0
    for page in range(n_pages):
        contacts: list[Any] = []
        for _ in range(draw(st.integers(0, 5))):
            serial += 1
            kind = draw(st.sampled_from(["good", "good", "no_id", "junk", "odd_fields"]))
            if kind == "junk":
                contacts.append(draw(json_value.filter(lambda v: not isinstance(v, dict))))
                continue
            contact: dict[str, Any] = {
                "id": f"k{serial}",
                "displayName": draw(st.one_of(st.text(max_size=10), json_value)),
                "email": draw(st.one_of(st.emails(), json_value)),
            }
            if kind == "odd_fields":
                contact["type"] = draw(json_value)
                contact["pbx"] = draw(json_value)
                contact["messaging"] = draw(json_value)
                contact["email"] = draw(json_value)
            if kind == "no_id":
                contact[draw(st.sampled_from(["id", "skip"]))] = draw(
                    st.sampled_from([None, "", 0, False, []])
                )
                contact.pop("skip", None)
                if contact.get("id"):
                    good.add(contact["id"])
            else:
                good.add(contact["id"])
            contacts.append(contact)
        last = page == n_pages - 1
        pages.append(
            json.dumps(
                {"results": contacts, "nextPageOffsetToken": None if last else f"p{page + 1}"}
            ).encode()
        )
    return pages, good


@FUZZ
@given(pages=contact_pages())
def test_connect_directory_keeps_good_contacts(
    pages: tuple[list[bytes], set[str]], caplog: pytest.LogCaptureFixture
) -> None:
    bodies, good = pages

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("offsetToken")
        return httpx.Response(200, content=bodies[int(token[1:]) if token else 0])

    async def go() -> Any:
        async with connect_client(handler) as client:
            return await list_contacts(client, users_only=False)

    contacts = run(go())
    assert {c.id for c in contacts} == good
    for c in contacts:
        assert c.email is None or isinstance(c.email, str)
        assert isinstance(c.display_name, str)
        assert c.type is None or isinstance(c.type, str)
        assert c.pbx_enabled in (None, True, False) and c.messaging_enabled in (None, True, False)
        assert c.extension is None or isinstance(c.extension, str)


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_value.map(lambda v: json.dumps(v).encode()),
        st.just(b'{"results": [{"id": "k1", "email": "a@b"}], "nextPageOffsetTo'),
        st.just(json.dumps({"results": "nope", "nextPageOffsetToken": 5}).encode()),
        st.just(json.dumps({"results": [], "nextPageOffsetToken": 5}).encode()),
        st.just(b'{"results": ' + b"[" * 100_000),
    )
)
def test_connect_directory_malformed_page_never_raises_unhandled(body: bytes) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls > 3:  # a page that points at itself must not loop forever
            return httpx.Response(200, json={"results": [], "nextPageOffsetToken": None})
        return httpx.Response(200, content=body)

    async def go() -> Any:
        async with connect_client(handler) as client:
            return await list_contacts(client)

    try:
        contacts = run(go())
    except PresencectlError:
        return
    assert isinstance(contacts, list)


# -- events and the mapping ------------------------------------------------------------------------


@FUZZ
@given(raw=json_value)
@example(raw={"userId": "c1", "presenceState": "onphone", "whenRaised": {"a": 1}})
@example(raw={"userId": ["c1"], "presenceState": "x" * 100_000})
@example(raw={"user": {"id": {"deep": 1}}, "unifiedUserId": True, "presenceState": "busy"})
def test_feed_event_parser_never_raises(raw: Any) -> None:
    from presencectl.connect.feed import event_keys

    assert isinstance(event_keys(raw), str)
    event = parse_event(raw)
    if event is not None:
        assert isinstance(event.user_id, str) and isinstance(event.presence, str)


@FUZZ
@given(availability=presence_word, activity=presence_word, ooo=st.booleans())
def test_mapping_of_any_teams_value_is_a_target_or_unaltered(
    availability: str, activity: str, ooo: bool
) -> None:
    target = Mapping().teams_to_connect(TeamsStatus.of(availability, activity, ooo))
    assert target is UNALTERED or isinstance(target, str)


@FUZZ
@given(value=presence_word)
def test_mapping_of_any_connect_value_is_a_target_or_unaltered(value: str) -> None:
    target = Mapping().connect_to_teams(value)
    assert target is UNALTERED or isinstance(target, TeamsStatus)
