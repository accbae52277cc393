"""Where the bearer tokens may go (issue 26): Graph paging follows only https links on the
configured Graph host, the Connect hub is https/wss only, and ids put into Graph paths are
quoted so that a ``/``, ``?``, ``#`` or ``..`` in one cannot change the request's target."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from presencectl.connect.feed import _parse_subscription
from presencectl.errors import ApiError
from presencectl.graph.presence import _clear_path, _set_path
from presencectl.graph.subscriptions import delete_subscription
from tests.test_graph_client import make_client, run


def _pages(next_link: str, seen: list[httpx.Request]) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.params.get("page") == "2":
            return httpx.Response(200, json={"value": [{"id": "b"}]})
        return httpx.Response(200, json={"value": [{"id": "a"}], "@odata.nextLink": next_link})

    return handler


async def _collect(client: Any) -> list[str]:
    async with client:
        return [item["id"] async for item in client.paged("/users")]


def test_a_next_link_on_the_graph_host_is_followed() -> None:
    seen: list[httpx.Request] = []
    client, _, _ = make_client(_pages("https://graph.test/v1.0/users?page=2", seen))
    assert run(_collect(client)) == ["a", "b"]
    assert len(seen) == 2


@pytest.mark.parametrize(
    "next_link",
    [
        "https://evil.example/v1.0/users?page=2",  # another host
        "http://graph.test/v1.0/users?page=2",  # the right host without TLS
        "https://graph.test:8443/v1.0/users?page=2",  # another port
        "https://graph.test.evil.example/v1.0/users?page=2",
        "https://graph.test@evil.example/v1.0/users?page=2",  # userinfo trick
        "//evil.example/v1.0/users?page=2",  # scheme-relative
    ],
)
def test_a_next_link_elsewhere_is_not_followed(next_link: str) -> None:
    seen: list[httpx.Request] = []
    client, _, _ = make_client(_pages(next_link, seen))
    with pytest.raises(ApiError, match="nextLink"):
        run(_collect(client))
    assert [r.url.host for r in seen] == ["graph.test"]  # the token went nowhere else
    assert all("Authorization" not in str(r.url) for r in seen)


@pytest.mark.parametrize(
    "uri", ["http://connect.test/hub", "ws://connect.test/hub", "ftp://connect.test/hub"]
)
def test_a_plain_hub_is_refused(uri: str) -> None:
    client = SimpleNamespace(api_url="https://connect.test/api")
    body = {"id": "s1", "deliveryMethod": {"uri": uri}}
    with pytest.raises(ApiError, match="not https or wss") as caught:
        _parse_subscription(client, body)  # type: ignore[arg-type]
    assert caught.value.code == "connect_bad_response"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("wss://connect.test/hub", "wss://connect.test/hub"),
        ("https://connect.test/hub", "https://connect.test/hub"),
        ("/hub/presence", "https://connect.test/hub/presence"),  # relative to the https API
        ("ws://127.0.0.1:9/hub", "ws://127.0.0.1:9/hub"),  # plain only to this machine
    ],
)
def test_a_tls_hub_is_taken(uri: str, expected: str) -> None:
    client = SimpleNamespace(api_url="https://connect.test/api")
    sub = _parse_subscription(client, {"id": "s1", "deliveryMethod": {"uri": uri}})  # type: ignore[arg-type]
    assert sub.uri == expected


def test_user_ids_are_quoted_in_presence_paths() -> None:
    assert _set_path("guest_contoso.com#EXT#@t.example") == (
        "/users/guest_contoso.com%23EXT%23@t.example/presence/setPresence"
    )
    assert _clear_path("../../applications/x?y") == (
        "/users/..%2F..%2Fapplications%2Fx%3Fy/presence/clearPresence"
    )
    assert _set_path("0e9b8c2a-1f7c-4b0e-9d3f-5a1c2b3d4e5f").startswith("/users/0e9b8c2a-")


def test_a_subscription_id_cannot_leave_its_path() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client, _, _ = make_client(handler)

    async def delete() -> bool:
        async with client:
            return await delete_subscription(client, "../users/x?$top=1")

    assert run(delete()) is True
    assert seen[0].url.raw_path == b"/v1.0/subscriptions/..%2Fusers%2Fx%3F%24top%3D1"
