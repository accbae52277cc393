"""What presencectl assumes about the Connect wire, checked on the configured account.

Owns two things the CLI renders (``presencectl connect set`` and ``presencectl connect verify``):

- :func:`check_tokens`: a client-credentials token for each scope the tool uses (messaging; the
  directory scope of the profile), each reported as a :class:`ScopeToken`;
- :class:`Verifier`: every assumption that no public source settles (docs/verification.md),
  tried on one test user and reported row by row (:class:`VerifyRow`): the tokens, the
  directory's keys and paging, a PUT/GET/DELETE round trip of each value the mapping can write,
  whether another session outranks ours, the change feed's first event, the DELETE of a session
  that is gone, and the rate-limit headers seen;
- :attr:`VerifyReport.findings`: what the account does where no public source settles it (the
  event's user-id field and scope, the subscription lifetime granted, renew and delete as tried,
  whether the directory takes ``fields``, the contact types seen, the API host, whether unknown
  values are accepted, whether the read-only statuses can be written), and
  :func:`apply_findings`, which writes those that are profile settings (``--apply``).

With ``user_id`` (``--user-id``) the presence and feed rows run even when the directory fails.

The verifier leaves nothing behind: every session it writes (ours, and one probe resource of its
own) and the feed subscription are removed in a ``finally``, so also when the run is cancelled
(Ctrl-C cancels the task under ``asyncio.run``). It writes only through the same paths, bodies and
names as the client (``connect.wire``), so a correction there is verified here unchanged. Nothing
here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from presencectl.connect import wire
from presencectl.connect.directory import list_contacts
from presencectl.connect.feed import PresenceFeed
from presencectl.errors import ExitCode, PresencectlError

if TYPE_CHECKING:
    import httpx

    from presencectl.config import Profile
    from presencectl.connect.client import ConnectClient

log = logging.getLogger(__name__)

HELD, DIFFERED, FAILED, SKIPPED, INFO = "held", "differed", "failed", "skipped", "info"

# The names a directory page may use (the SDK's Contacts.cs, and the shape the first build read).
DIRECTORY_LIST_KEYS = (wire.CONTACTS_LIST_KEY, "contacts")
DIRECTORY_NEXT_KEYS = (wire.CONTACTS_NEXT_KEY, "offsetToken")
DIRECTORY_PROBE_COUNT = 5
DIRECTORY_PROBE_PAGES = 3
# The user-id field of a feed event: no public source names it; these are the plausible ones.
EVENT_USER_ID_FIELDS = wire.EVENT_USER_ID_FIELDS
# Our session and a probe session of the verifier's own: the probe stands for "the user's own
# state" (the API gives no other way to make one) in the aggregation check.
AGGREGATION_HIGH = "onphone"
AGGREGATION_LOW = "available"
RATE_HEADER_HINTS = ("ratelimit", "rate-limit", "retry-after")
# Statuses presencectl only reads (no public source; the mapping never writes them): each is
# written once under the probe session to learn whether Connect takes it from an API client.
READ_ONLY_STATUSES = ("agent_onphone", "agent_available", "screen_sharing")
NONSENSE_VALUE = "presencectl_probe_not_a_status"
# The findings `--apply` writes to the profile, and the profile key each sets.
APPLIED_SETTINGS = {
    "feed_user_field": "connect_feed_user_field",
    "feed_event_scope": "connect_feed_event_scope",
    "directory_fields": "connect_directory_fields",
}

Sleep = Callable[[float], Awaitable[None]]


def scopes_for(profile: Profile) -> list[tuple[str, str]]:
    """(purpose, scope) for each token the tool asks for: one scope per token."""
    return [("messaging", wire.MESSAGING_SCOPE), ("directory", profile.connect_directory_scope)]


# ------------------------------------------------------------------------------------ tokens


@dataclass
class ScopeToken:
    """The answer to one client-credentials token request."""

    purpose: str
    scope: str
    result: str  # "ok" | "failed"
    detail: str
    code: str = ""
    exit_code: int = 0
    hint: str = ""


async def tokens_per_scope(
    profile: Profile,
    *,
    client_id: str | None = None,
    secret: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[ScopeToken]:
    """Ask Connect for a token for each scope of :func:`scopes_for`, one request each."""
    from presencectl.connect.client import ConnectClient, connect_client_for

    if client_id is not None and secret is not None:
        client = ConnectClient(
            profile.connect_login_url,
            profile.connect_api_url,
            client_id,
            secret,
            profile.http_settings(),
            transport,
            directory_scope=profile.connect_directory_scope,
            max_attempts=2,
            max_connections=4,
        )
    else:
        client = connect_client_for(profile, transport, max_attempts=2, max_connections=4)
    results: list[ScopeToken] = []
    async with client:
        for purpose, scope in scopes_for(profile):
            try:
                await client.access_token(scope)
            except PresencectlError as exc:
                results.append(
                    ScopeToken(
                        purpose,
                        scope,
                        "failed",
                        exc.message,
                        exc.code,
                        int(exc.exit_code),
                        exc.hint,
                    )
                )
            else:
                results.append(ScopeToken(purpose, scope, "ok", "token issued"))
    return results


def check_tokens(
    profile: Profile, *, client_id: str | None = None, secret: str | None = None
) -> list[ScopeToken]:
    """:func:`tokens_per_scope` for synchronous callers (the CLI)."""
    return asyncio.run(tokens_per_scope(profile, client_id=client_id, secret=secret))


# ------------------------------------------------------------------------------------ verify


@dataclass
class VerifyRow:
    """One assumption and what the account showed. ``observed`` holds names, never secrets."""

    check: str
    result: str  # held | differed | failed | skipped | info
    detail: str
    observed: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    exit_code: int = 0
    hint: str = ""


@dataclass
class VerifyReport:
    profile: str
    user: str
    resource: str
    settle_s: float
    rows: list[VerifyRow] = field(default_factory=list)
    left_behind: list[str] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)
    applied: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """The first failure's exit code; else 5 when any assumption differed; else 0."""
        failed = [r for r in self.rows if r.result == FAILED]
        if failed:
            return failed[0].exit_code or int(ExitCode.ERROR)
        if self.left_behind or any(r.result == DIFFERED for r in self.rows):
            return int(ExitCode.PARTIAL)
        return int(ExitCode.OK)

    @property
    def held(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "user": self.user,
            "resource": self.resource,
            "settle_s": self.settle_s,
            "rows": [
                {
                    "check": r.check,
                    "result": r.result,
                    "detail": r.detail,
                    "observed": r.observed,
                    "code": r.code,
                    "hint": r.hint,
                }
                for r in self.rows
            ],
            "left_behind": self.left_behind,
            "findings": self.findings,
            "applied": self.applied,
            "held": self.held,
            "exit_code": self.exit_code,
        }


@dataclass
class VerifyOptions:
    user: str
    settle_s: float = 15.0
    poll_s: float = 0.5
    user_id: str | None = None  # the test user's Connect id: presence rows without the directory


class _RawFeed(PresenceFeed):
    """The client's own PresenceFeed, also keeping every raw ``OnPresenceEvent`` argument."""

    def __init__(self, client: ConnectClient, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.raw: asyncio.Queue[Any] = asyncio.Queue()

    async def _on_invocation(self, arguments: Any) -> None:
        for raw in arguments if isinstance(arguments, list) else [arguments]:
            self.raw.put_nowait(raw)
        await super()._on_invocation(arguments)


def _field_path(event: dict[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _paths_to(value: Any, wanted: str, prefix: str = "") -> list[str]:
    """Every key path (``a.b``) of ``value`` that holds ``wanted`` (nested objects followed)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            path = f"{prefix}{key}"
            if isinstance(inner, (str, int)) and not isinstance(inner, bool):
                if str(inner) == wanted:
                    found.append(path)
            elif isinstance(inner, dict):
                found.extend(_paths_to(inner, wanted, path + "."))
    return found


def _keys_of(event: Any) -> list[str]:
    """Every key of an event, nested ones as ``a.b`` — names only, never values."""
    if not isinstance(event, dict):
        return []
    keys: list[str] = []
    for key, value in event.items():
        keys.append(str(key))
        if isinstance(value, dict):
            keys.extend(f"{key}.{inner}" for inner in value)
    return sorted(keys)


class Verifier:
    """Runs every check of ``connect verify`` against one profile and one test user."""

    def __init__(
        self,
        profile: Profile,
        options: VerifyOptions,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_row: Callable[[VerifyRow], None] | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.options = options
        self.transport = transport
        self.on_row = on_row
        self._sleep = sleep
        self._clock = clock
        self.resource = profile.connect_resource_id or ""  # the client's, once it exists
        self.probe_resource = str(uuid.uuid4())
        self.report = VerifyReport(profile.name, options.user, self.resource, options.settle_s)
        self.client: ConnectClient | None = None
        self.user_id: str | None = None
        self.before: str | None = None
        self.slowest_show_s = 0.0
        self.rate_headers: dict[str, str] = {}
        self._written: set[tuple[str, str]] = set()  # (user id, resource) we may still hold
        self._feed: _RawFeed | None = None
        self._contacts: list[Any] = []
        self._directory_token = True

    # -- rows ---------------------------------------------------------------------------------
    def _add(self, row: VerifyRow) -> VerifyRow:
        self.report.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)
        return row

    def _failed(self, check: str, exc: PresencectlError) -> VerifyRow:
        return self._add(
            VerifyRow(
                check,
                FAILED,
                exc.message,
                code=exc.code,
                exit_code=int(exc.exit_code),
                hint=exc.hint,
            )
        )

    def _skip(self, check: str, why: str) -> None:
        self._add(VerifyRow(check, SKIPPED, why))

    # -- wire helpers -------------------------------------------------------------------------
    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self.client is not None
        response = await self.client.request(method, path, **kwargs)
        for name, value in response.headers.items():
            if any(hint in name.lower() for hint in RATE_HEADER_HINTS):
                self.rate_headers[name] = value
        return response

    async def _read(self) -> str:
        from presencectl.errors import ApiError

        assert self.user_id is not None
        response = await self._request("GET", wire.presence_path(self.user_id))
        try:
            body = response.json()
        except ValueError as exc:
            raise ApiError(
                "Connect sent a presence that is not JSON", code="connect_bad_response"
            ) from exc
        value = body.get(wire.PRESENCE_FIELD) if isinstance(body, dict) else None
        if not isinstance(value, str):
            raise ApiError(
                f"Connect's presence answer has no '{wire.PRESENCE_FIELD}'",
                code="connect_bad_response",
            )
        return value

    async def _put(self, resource: str, value: str) -> int:
        assert self.user_id is not None
        self._written.add((self.user_id, resource))
        response = await self._request(
            "PUT",
            wire.presence_path(self.user_id),
            params={wire.RESOURCE_PARAM: resource},
            json={wire.PRESENCE_FIELD: value},
        )
        return response.status_code

    async def _delete(self, resource: str) -> int:
        assert self.user_id is not None
        response = await self._request(
            "DELETE",
            wire.presence_path(self.user_id),
            params={wire.RESOURCE_PARAM: resource},
            allow=(404,),
        )
        self._written.discard((self.user_id, resource))
        return response.status_code

    async def _wait_for(
        self, wanted: Callable[[str], bool], timeout: float
    ) -> tuple[str, float | None]:
        """Read until ``wanted(value)`` or ``timeout``: (last value, seconds it took or None)."""
        start = self._clock()
        while True:
            value = await self._read()
            elapsed = self._clock() - start
            if wanted(value):
                return value, elapsed
            if elapsed >= timeout:
                return value, None
            await self._sleep(min(self.options.poll_s, max(0.0, timeout - elapsed)))

    # -- the run ------------------------------------------------------------------------------
    async def run(self) -> VerifyReport:
        from presencectl.connect.client import connect_client_for

        try:
            if not await self.check_tokens():
                return self.report
            self.client = connect_client_for(self.profile, self.transport)
            self.resource = self.report.resource = self.client.resource_id
            self.report.findings["api_host"] = {
                "url": self.client.api_url,
                "answered": None,
                "other": wire.other_api_host(self.client.api_url),
            }
            if self._directory_token:
                directory = await self._guarded("Directory", self.check_directory)
            else:
                directory = False
                self._skip("Directory", "skipped: no directory token (see above); --user-id")
            if not directory and not self.options.user_id:
                return self.report
            if not await self._guarded("Test user", self.check_user):
                return self.report
            for value in self.writable_values():
                await self._guarded(
                    f"Round trip {value}", functools.partial(self.round_trip, value)
                )
            await self._guarded("Clear a session that is gone", self.check_clear_gone)
            await self._guarded("Aggregation", self.check_aggregation)
            await self._guarded("Lenient values", self.check_lenient)
            await self._guarded("Read-only statuses", self.check_read_only)
            await self._guarded("Change feed", self.check_feed)
            self.check_rate_headers()
            await self._guarded("Restored", self.check_restored)
        finally:
            await self.cleanup()
        return self.report

    async def _guarded(self, check: str, step: Callable[[], Awaitable[bool]]) -> bool:
        try:
            return await step()
        except PresencectlError as exc:
            host = self.report.findings.get("api_host")
            if getattr(exc, "status", None) == 404 and host and host["answered"] is None:
                host["answered"] = False  # nothing has answered yet: the host may be wrong
            self._failed(check, exc)
            return False

    def _answered(self) -> None:
        host = self.report.findings.get("api_host")
        if host is not None:
            host["answered"] = True

    async def check_tokens(self) -> bool:
        tokens = await tokens_per_scope(self.profile, transport=self.transport)
        for token in tokens:
            name = f"Token {token.purpose}"
            if token.result == "ok":
                self._add(
                    VerifyRow(name, HELD, f"{token.scope}: token issued", {"scope": token.scope})
                )
            else:
                self._add(
                    VerifyRow(
                        name,
                        FAILED,
                        f"{token.scope}: {token.detail}",
                        {"scope": token.scope},
                        token.code,
                        token.exit_code or int(ExitCode.AUTH),
                        token.hint,
                    )
                )
        if all(t.result == "ok" for t in tokens):
            return True
        messaging = all(t.result == "ok" for t in tokens if t.purpose == "messaging")
        if messaging and self.options.user_id:
            self._directory_token = False  # --user-id: the presence rows run without it
            return True
        for check in ("Directory", "Test user", "Round trips", "Aggregation", "Change feed"):
            self._skip(check, "skipped: no token (see above)")
        return False

    async def check_directory(self) -> bool:
        """The directory's list and paging keys, on a few small pages, then the client's read."""
        from presencectl.errors import ApiError

        pages: list[int] = []
        list_key = next_key = None
        contact_keys: list[str] = []
        assert self.client is not None
        base = {wire.FIELDS_PARAM: wire.FIELDS_ALL, wire.COUNT_PARAM: str(DIRECTORY_PROBE_COUNT)}
        params = dict(base)
        seen_tokens: set[str] = set()
        repeated = False
        fields_answer = "accepted"
        for _ in range(DIRECTORY_PROBE_PAGES):
            try:
                response = await self._request(
                    "GET", wire.CONTACTS_PATH, params=params, scope=self.client.directory_scope
                )
            except ApiError as exc:
                if exc.status != 400 or wire.FIELDS_PARAM not in params:
                    raise
                fields_answer = "rejected"  # asked again without it, as the client does
                base.pop(wire.FIELDS_PARAM)
                params.pop(wire.FIELDS_PARAM)
                response = await self._request(
                    "GET", wire.CONTACTS_PATH, params=params, scope=self.client.directory_scope
                )
            self._answered()
            try:
                body = response.json()
            except ValueError as exc:
                raise ApiError(
                    "Connect sent a directory page that is not JSON", code="connect_bad_response"
                ) from exc
            body = body if isinstance(body, dict) else {}
            list_key = next((k for k in DIRECTORY_LIST_KEYS if isinstance(body.get(k), list)), None)
            page = body.get(list_key, []) if list_key else []
            pages.append(len(page))
            if page and not contact_keys:
                contact_keys = _keys_of(page[0])
            next_key = next((k for k in DIRECTORY_NEXT_KEYS if k in body), next_key)
            token = body.get(next_key) if next_key else None
            if not token:
                break
            if str(token) in seen_tokens:
                repeated = True
                break
            seen_tokens.add(str(token))
            params = {**base, wire.OFFSET_PARAM: str(token)}
        self.report.findings["directory_fields"] = fields_answer
        self.client.directory_fields = "" if fields_answer == "rejected" else wire.FIELDS_ALL
        everyone = await list_contacts(self.client, users_only=False)
        contacts = [c for c in everyone if c.is_user]
        self._contacts = everyone
        types: dict[str, int] = {}
        for contact in everyone:
            name = contact.type or "(none)"
            types[name] = types.get(name, 0) + 1
        self.report.findings["contact_types"] = {
            "seen": dict(sorted(types.items())),
            "people": sorted({c.type or "(none)" for c in contacts}),
        }
        observed = {
            "list_key": list_key,
            "next_page_key": next_key,
            "page_sizes": pages,
            "count_honoured": bool(pages) and max(pages) <= DIRECTORY_PROBE_COUNT,
            "contact_keys": contact_keys,
            "contacts_read_by_client": len(contacts),
        }
        expected = (wire.CONTACTS_LIST_KEY, wire.CONTACTS_NEXT_KEY)
        problems = []
        if list_key != expected[0]:
            problems.append(f"the list is under {list_key!r}, the client reads {expected[0]!r}")
        if len(pages) > 1 and next_key != expected[1]:
            problems.append(
                f"the next page is under {next_key!r}, the client reads {expected[1]!r}"
            )
        if repeated:
            problems.append("paging repeated an offset token")
        if pages and sum(pages) and not contacts:
            problems.append("the client read no contact from a directory that has some")
        paging = (
            f"{len(pages)} pages of ≤{DIRECTORY_PROBE_COUNT} followed"
            if len(pages) > 1
            else "one page (paging not exercised: the directory is small or count was ignored)"
        )
        if problems:
            self._add(VerifyRow("Directory", DIFFERED, "; ".join(problems), observed))
        else:
            self._add(
                VerifyRow(
                    "Directory",
                    HELD,
                    f"'{list_key}' and '{next_key or expected[1]}' as the client reads them; "
                    f"{paging}; {len(contacts)} contacts",
                    observed,
                )
            )
        return True

    async def check_user(self) -> bool:
        wanted = self.options.user.strip().lower()
        contact = next((c for c in self._contacts if (c.email or "").lower() == wanted), None)
        if self.options.user_id and (contact is None or contact.id != self.options.user_id):
            self.user_id = self.options.user_id
            self.before = await self._read()
            self._answered()
            self._add(
                VerifyRow(
                    "Test user",
                    HELD,
                    f"Connect id {self.user_id} (--user-id), shows {self.before} now",
                    {"user_id": self.user_id, "presence_before": self.before},
                )
            )
            return True
        if contact is None:
            seen = self.report.findings.get("contact_types", {}).get("seen", {})
            self._add(
                VerifyRow(
                    "Test user",
                    FAILED,
                    f"no Connect contact with the email {self.options.user}"
                    + (
                        " (contact types seen: "
                        + ", ".join(f"{k} ×{v}" for k, v in seen.items())
                        + ")"
                        if seen
                        else ""
                    ),
                    code="connect_user_unknown",
                    exit_code=int(ExitCode.CONFIG),
                    hint="pass --user with the email of a Connect user (one that has a Cloud "
                    "PBX number; `presencectl users` lists them), best one who is idle; or "
                    "--user-id with their Connect id",
                )
            )
            return False
        self.user_id = contact.id
        self.before = await self._read()
        self._answered()
        self._add(
            VerifyRow(
                "Test user",
                HELD,
                f"{contact.email}: Connect id {contact.id}, shows {self.before} now",
                {"user_id": contact.id, "presence_before": self.before},
            )
        )
        return True

    def writable_values(self) -> list[str]:
        """Every Connect value the profile's mapping can write, in the mapping's order."""
        from presencectl.mapping import Mapping

        values: list[str] = []
        for row in Mapping.from_profile(self.profile).rows("teams-to-connect"):
            if row.target != "unaltered" and row.target not in values:
                values.append(row.target)
        return values

    async def round_trip(self, value: str) -> bool:
        settle = self.options.settle_s
        before = self.before or "offline"
        put_status = await self._put(self.resource, value)
        shown, took = await self._wait_for(lambda v: v == value, settle)
        if took is not None:
            self.slowest_show_s = max(self.slowest_show_s, took)
        delete_status = await self._delete(self.resource)
        restored, back = await self._wait_for(lambda v: v == before, settle)
        observed = {
            "put_status": put_status,
            "shown": shown,
            "shown_after_s": None if took is None else round(took, 2),
            "delete_status": delete_status,
            "after_delete": restored,
            "restored_after_s": None if back is None else round(back, 2),
        }
        check = f"Round trip {value}"
        if took is None:
            hidden = f" (the user's own {before} may outrank it)" if before != "offline" else ""
            self._add(
                VerifyRow(
                    check,
                    DIFFERED,
                    f"wrote {value}, Connect still showed {shown} after {settle:g} s{hidden}",
                    observed,
                )
            )
        elif back is None:
            self._add(
                VerifyRow(
                    check,
                    DIFFERED,
                    f"deleted our session, Connect still showed {restored} "
                    f"after {settle:g} s (expected {before})",
                    observed,
                )
            )
        else:
            self._add(
                VerifyRow(
                    check,
                    HELD,
                    f"PUT {put_status}, shown after {took:.1f} s; DELETE "
                    f"{delete_status}, back to {before}",
                    observed,
                )
            )
        return True

    async def check_clear_gone(self) -> bool:
        status = await self._delete(self.resource)
        ok = status == 404 or 200 <= status < 300
        self._add(
            VerifyRow(
                "Clear a session that is gone",
                HELD if ok else DIFFERED,
                f"DELETE of a session we no longer hold answered {status}"
                + ("" if ok else " (the client expects 2xx or 404)"),
                {"status": status},
            )
        )
        return True

    async def check_aggregation(self) -> bool:
        """A probe session at ``onphone`` stands for the user's own state; ours then writes
        ``available``: with sessions ranked (the model), onphone stays."""
        settle = self.options.settle_s
        check = "Aggregation"
        if self.before == AGGREGATION_HIGH:
            self._skip(
                check, f"skipped: the test user is {AGGREGATION_HIGH} already (pick an idle one)"
            )
            return True
        await self._put(self.probe_resource, AGGREGATION_HIGH)
        shown, took = await self._wait_for(lambda v: v == AGGREGATION_HIGH, settle)
        if took is None:
            self._add(
                VerifyRow(
                    check,
                    SKIPPED,
                    f"the probe session's {AGGREGATION_HIGH} never showed (Connect showed {shown})",
                    {"shown": shown},
                )
            )
            await self._delete(self.probe_resource)
            return True
        await self._put(self.resource, AGGREGATION_LOW)
        # Long enough for our write to show if it could (twice the slowest round trip).
        window = min(settle, max(1.0, 2 * self.slowest_show_s))
        value, lower_after = await self._wait_for(lambda v: v == AGGREGATION_LOW, window)
        await self._delete(self.resource)
        await self._delete(self.probe_resource)
        observed = {
            "other_session": AGGREGATION_HIGH,
            "ours": AGGREGATION_LOW,
            "shown": value,
            "watched_s": round(window, 2),
        }
        if lower_after is None:
            self._add(
                VerifyRow(
                    check,
                    HELD,
                    f"another session's {AGGREGATION_HIGH} outranks our later "
                    f"{AGGREGATION_LOW}: Connect ranks sessions, the user's own state wins",
                    {**observed, "model": "rank"},
                )
            )
        else:
            self._add(
                VerifyRow(
                    check,
                    DIFFERED,
                    f"our later {AGGREGATION_LOW} replaced another session's "
                    f"{AGGREGATION_HIGH}: Connect shows the last writer, so our session can hide "
                    "the user's own state",
                    {**observed, "model": "last_writer"},
                )
            )
        return True

    async def _probe_write(self, value: str) -> int:
        """PUT ``value`` under the probe session (a 4xx is an answer here, not an error), then
        remove the probe session again."""
        assert self.user_id is not None
        self._written.add((self.user_id, self.probe_resource))
        response = await self._request(
            "PUT",
            wire.presence_path(self.user_id),
            params={wire.RESOURCE_PARAM: self.probe_resource},
            json={wire.PRESENCE_FIELD: value},
            allow=(400, 403, 404, 409, 422),
        )
        await self._delete(self.probe_resource)
        return response.status_code

    async def check_lenient(self) -> bool:
        """A value that is no status, under the probe session: refused (strict) or taken."""
        status = await self._probe_write(NONSENSE_VALUE)
        lenient = 200 <= status < 300
        self.report.findings["lenient_values"] = lenient
        self._add(
            VerifyRow(
                "Lenient values",
                INFO if lenient else HELD,
                f"a value that is no status answered {status}: "
                + (
                    "Connect takes any value, so a round trip holding proves less"
                    if lenient
                    else "Connect refuses unknown values"
                ),
                {"status": status, "lenient": lenient},
            )
        )
        return True

    async def check_read_only(self) -> bool:
        """Each status presencectl only reads, written once under the probe session."""
        answers: dict[str, Any] = {}
        for value in READ_ONLY_STATUSES:
            status = await self._probe_write(value)
            answers[value] = "accepted" if 200 <= status < 300 else f"refused ({status})"
        self.report.findings["read_only_statuses"] = answers
        self._add(
            VerifyRow(
                "Read-only statuses",
                INFO,
                "; ".join(f"{k} {v}" for k, v in answers.items())
                + (
                    " (Connect takes any value: this says nothing)"
                    if self.report.findings.get("lenient_values")
                    else ""
                ),
                dict(answers),
            )
        )
        return True

    async def check_feed(self) -> bool:
        settle = self.options.settle_s
        check = "Change feed"
        assert self.client is not None and self.user_id is not None
        # The production lifetime, so a service that caps it shows what it grants.
        self._feed = _RawFeed(self.client, ttl_s=wire.SUBSCRIPTION_TTL_S)
        feed = self._feed
        await feed.start()
        if not await feed.wait_connected(settle):
            error = feed.last_error
            self._add(
                VerifyRow(
                    check,
                    DIFFERED,
                    "subscribed, but the hub did not connect within "
                    f"{settle:g} s" + (f": {getattr(error, 'message', error)}" if error else ""),
                    {"subscription": bool(feed.subscription)},
                )
            )
            await self._close_feed()
            return True
        sub = feed.subscription
        self.report.findings["subscription_ttl"] = {
            "requested_s": feed.ttl_requested_s,
            "granted_s": feed.ttl_s,
            "expires_in_s": None
            if sub is None or sub.expires_in_s is None
            else round(sub.expires_in_s),
        }
        before = self.before or "offline"
        value = AGGREGATION_HIGH if before != AGGREGATION_HIGH else AGGREGATION_LOW
        await self._put(self.resource, value)
        event, first = await self._event_naming_user(settle)
        scope = await self._probe_scope(value, event) if event is not None else None
        await self._delete(self.resource)
        await self._renew_and_delete()
        if event is None and first is None:
            self._add(
                VerifyRow(
                    check,
                    DIFFERED,
                    f"connected, wrote {value}, but no OnPresenceEvent came within {settle:g} s"
                    " (none is raised when the write does not change what Connect shows)",
                    {"subscription_renewed": self.report.findings.get("subscription_renew")},
                )
            )
            return True
        if event is None:
            keys = _keys_of(first)
            self._add(
                VerifyRow(
                    check,
                    FAILED,
                    f"connected, wrote {value}, but no event named the test user's id within "
                    f"{settle:g} s"
                    + (f" (events came, with keys {', '.join(keys)})" if keys else ""),
                    {"event_keys": keys, "user_id_matches": False},
                    code="connect_feed_user_unmatched",
                    exit_code=int(ExitCode.PARTIAL),
                    hint="the feed's events name users some other way: attach `presencectl -o "
                    "json connect verify …` to a bug report",
                )
            )
            return True
        paths = _paths_to(event, self.user_id)
        field_name = paths[0] if paths else None
        self.report.findings["feed_user_field"] = field_name
        if scope is not None:
            self.report.findings["feed_event_scope"] = scope
        presence_field = next(
            (
                f
                for f in (wire.EVENT_PRESENCE, wire.PRESENCE_FIELD)
                if isinstance(event.get(f), str)
            ),
            None,
        )
        from presencectl.connect.feed import parse_event

        read = parse_event(
            event,
            user_field=self.client.feed_user_field,
            is_known={self.user_id}.__contains__,
            scope=self.client.feed_event_scope,
        )
        client_reads = read.user_id if read is not None else None
        event_keys = _keys_of(event)
        observed = {
            "event_keys": event_keys,
            "user_id_field": field_name,
            "presence_field": presence_field,
            "user_id_matches": client_reads == self.user_id,
            "event_scope": scope,
            "subscription_renewed": self.report.findings.get("subscription_renew"),
            "subscription_deleted": self.report.findings.get("subscription_delete"),
        }
        if client_reads != self.user_id or presence_field is None:
            self._add(
                VerifyRow(
                    check,
                    FAILED,
                    f"the test user's id is in '{field_name}', but the client reads "
                    + (f"'{client_reads}'" if client_reads else "no user id")
                    + " from the event: Connect → Teams would be lost",
                    observed,
                    code="connect_feed_user_mismatch",
                    exit_code=int(ExitCode.PARTIAL),
                    hint="run `presencectl connect verify --apply …` to set "
                    f"connect_feed_user_field = {field_name!r} in the profile",
                )
            )
        else:
            self._add(
                VerifyRow(
                    check,
                    HELD,
                    f"subscribed, the test user's event carries the user id in "
                    f"'{field_name}' and the presence in '{presence_field}'; events are "
                    f"{scope or 'of undetermined'} scope; renew "
                    f"{self.report.findings.get('subscription_renew')}, delete "
                    f"{self.report.findings.get('subscription_delete')}",
                    observed,
                )
            )
        return True

    async def _event_naming_user(
        self, timeout: float
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The next raw event with the test user's id under any key (every user of the account
        is in the feed), and the first event seen at all."""
        assert self._feed is not None and self.user_id is not None
        first: dict[str, Any] | None = None
        deadline = self._clock() + timeout
        with contextlib.suppress(TimeoutError):
            while True:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                candidate = await asyncio.wait_for(self._feed.raw.get(), remaining)
                if not isinstance(candidate, dict):
                    continue
                first = first or candidate
                if _paths_to(candidate, self.user_id):
                    return candidate, first
        return None, first

    async def _probe_scope(self, high: str, event: dict[str, Any]) -> str:
        """Whether events carry the user's aggregate or one session's state: with ours at
        ``high``, the probe session writes a lower value; an event saying the lower value while
        Connect still shows ``high`` is session-scoped."""
        from presencectl.connect.feed import is_session_event

        if is_session_event(event, "auto"):
            return "session"
        if high != AGGREGATION_HIGH:
            return "undetermined"
        await self._put(self.probe_resource, AGGREGATION_LOW)
        window = min(self.options.settle_s, max(1.0, 2 * self.slowest_show_s))
        said: list[Any] = []
        deadline = self._clock() + window
        while (left := deadline - self._clock()) > 0:  # every event of the window, not the first
            later, _ = await self._event_naming_user(left)
            if later is None:
                break
            said.append(later.get(wire.EVENT_PRESENCE))
        shown = await self._read()
        await self._delete(self.probe_resource)
        if shown != high:
            return "undetermined"  # the lower write showed: Connect shows the last writer
        return "session" if AGGREGATION_LOW in said else "user"

    async def _renew_and_delete(self) -> None:
        """Renew the subscription and delete it, each actually tried, as the findings say."""
        from presencectl.connect.feed import delete_subscription, renew_subscription

        feed = self._feed
        assert feed is not None and self.client is not None
        sub = feed.subscription
        await feed.close(delete_subscription=False)  # the supervisor stops; the subscription lives
        self._feed = None
        if sub is None:
            return
        try:
            await renew_subscription(self.client, sub)
            self.report.findings["subscription_renew"] = "renewed"
        except PresencectlError as exc:
            status = getattr(exc, "status", None)
            self.report.findings["subscription_renew"] = f"failed ({status or exc.code})"
        try:
            gone = await delete_subscription(self.client, sub.id)
            self.report.findings["subscription_delete"] = "deleted" if gone else "already gone"
        except PresencectlError as exc:
            status = getattr(exc, "status", None)
            self.report.findings["subscription_delete"] = f"failed ({status or exc.code})"
            self.report.left_behind.append(f"change-feed subscription {sub.id}")

    def check_rate_headers(self) -> None:
        if self.rate_headers:
            names = ", ".join(sorted(self.rate_headers))
            detail = f"seen: {names}"
        else:
            detail = "none seen (the ~250/min budget stays an assumption)"
        self._add(VerifyRow("Rate-limit headers", INFO, detail, dict(self.rate_headers)))

    async def check_restored(self) -> bool:
        value = await self._read()
        before = self.before or "offline"
        self._add(
            VerifyRow(
                "Restored",
                HELD if value == before else DIFFERED,
                f"the test user shows {value}" + ("" if value == before else f", was {before}"),
                {"before": before, "after": value},
            )
        )
        return True

    # -- leaving nothing behind ---------------------------------------------------------------
    async def _close_feed(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.close()

    async def cleanup(self) -> None:
        """Remove every session and subscription this run made (best effort, each logged)."""
        try:
            await self._close_feed()
        except Exception as exc:  # a failing close must not keep the sessions from going
            log.warning("connect verify: could not close the feed: %s", exc)
            self.report.left_behind.append("a change-feed subscription")
        for user_id, resource in sorted(self._written):
            try:
                assert self.client is not None
                await self.client.request(
                    "DELETE",
                    wire.presence_path(user_id),
                    params={wire.RESOURCE_PARAM: resource},
                    allow=(404,),
                )
                self._written.discard((user_id, resource))
            except Exception as exc:
                log.warning("connect verify: could not delete session %s: %s", resource, exc)
                self.report.left_behind.append(f"session {resource} on {user_id}")
        if self.client is not None:
            await self.client.aclose()
            self.client = None


def apply_findings(profile: Profile, report: VerifyReport) -> dict[str, str]:
    """Write the findings that are profile settings (``APPLIED_SETTINGS``) to the stored
    profile, so the client follows the account; returns what was set. Nothing is written for a
    finding the run did not settle."""
    from presencectl.config import config_path, profile_from_table, save_profile

    found = report.findings
    settings: dict[str, str] = {}
    if found.get("feed_user_field"):
        settings["connect_feed_user_field"] = str(found["feed_user_field"])
    if found.get("feed_event_scope") in ("user", "session"):
        settings["connect_feed_event_scope"] = str(found["feed_event_scope"])
    if found.get("directory_fields") in ("accepted", "rejected"):
        rejected = found["directory_fields"] == "rejected"
        settings["connect_directory_fields"] = "" if rejected else wire.FIELDS_ALL
    for key, value in settings.items():
        setattr(profile, key, value)
    if settings:
        profile_from_table(profile.name, profile.to_toml(), config_path())  # validated
        save_profile(profile)
    report.applied = settings
    return settings


def run_verify(
    profile: Profile,
    options: VerifyOptions,
    *,
    on_row: Callable[[VerifyRow], None] | None = None,
) -> VerifyReport:
    """Run every check (synchronous callers: the CLI)."""
    return asyncio.run(Verifier(profile, options, on_row=on_row).run())
