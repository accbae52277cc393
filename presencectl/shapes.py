"""The JSON documents that ``-o json`` promises, as types: the contract scripts rely on.

Owns one ``TypedDict`` per documented shape (docs/ci.md "JSON shapes", docs/troubleshooting.md
for ``doctor``, docs/azure-setup.md for ``consent --check``): the error document, ``sync``
(one-shot) and ``disable``, ``status`` with its ``health``, ``users``, ``doctor``,
``consent --check``, ``config show | path | profiles`` and ``mapping show``. Keys are stable
``snake_case``; new keys may be added, existing ones are not renamed (docs/ci.md). A key marked
``NotRequired`` is present only in the case its comment names.

The producers build plain dicts; ``tests/test_json_shapes.py`` runs the real commands against the
sandbox and checks every document against these types (keys, value types, required or not), and
that the keys docs/ci.md shows exist here. Pure types: nothing here runs at import but ``typing``.
"""

from typing import Any, Literal, NotRequired, TypedDict

# --- errors ---------------------------------------------------------------------------------------


class ErrorBody(TypedDict):
    code: str  # stable snake_case, listed in docs/troubleshooting.md
    message: str
    hint: str


class ErrorDocument(TypedDict):
    """What stdout holds on any error with ``-o json`` (and nothing else)."""

    error: ErrorBody


# --- sync (one-shot) and disable -----------------------------------------------------------------


class SyncSummary(TypedDict):
    """The counts of a run (``SyncResult.summary()``)."""

    direction: str
    dry_run: bool
    cycles: int
    matched: int
    unmatched: int
    conflicts: int
    read: int
    written: int
    cleared: int
    skipped: int
    failed: int
    adopted: int
    interrupted: bool
    throttled: int
    throttle_wait_s: float
    duration_s: float


# "from" is a keyword, hence the functional form.
ActionRow = TypedDict(
    "ActionRow",
    {
        "user": str,
        "side": str,  # teams | connect
        "kind": str,  # set | clear
        "from": str | None,
        "to": str | None,
        "reason": str,
        "purpose": str,
        "outcome": str,  # planned | ok | gone | failed
        "error": NotRequired[str],  # only when the write failed
    },
)


class Failure(TypedDict):
    user: str
    side: str
    error: str
    user_id: NotRequired[str]  # when the user's id is known apart from the email


class SyncDocument(SyncSummary):
    """``sync -o json`` (one-shot): the counts, every action, the failures."""

    actions: list[ActionRow]
    failures: list[Failure]
    error: NotRequired[ErrorBody]  # exit 5 (partial_sync) or 130 (interrupted) rides along


class DisableDocument(TypedDict):
    """``disable -o json``."""

    teams_cleared: int
    connect_cleared: int
    already_gone: int
    subscriptions_deleted: int
    failed: int
    source: Literal["state", "directory"]
    interrupted: bool
    failures: list[Failure]
    error: NotRequired[ErrorBody]  # exit 5 or 130


# --- status ---------------------------------------------------------------------------------------


class NextSessionWrite(TypedDict):
    at: str | None
    user: str
    why: str


class FailingUser(TypedDict):
    user: str
    error: str


class HealthReport(TypedDict):
    """``status`` → ``health`` (from the state database, no network).

    Open: new health facts may be added as keys (recorded ones come as strings)."""

    running: NotRequired[bool]  # once a run was recorded
    last_cycle_at: str | None
    last_cycle_age_s: float | None
    failing_users: list[FailingUser]
    throttled: int
    throttle_wait_s: float
    connect_feed: str | None
    subscriptions: int
    subscriptions_expire_next: str | None
    next_session_write: NextSessionWrite | None


class LastRun(TypedDict):
    mode: str
    direction: str
    started: str | None
    finished: str | None
    outcome: str | None  # None while the run goes on
    cycles: int
    matched: int
    written: int
    cleared: int
    failed: int


# "from" is a keyword, hence the functional form.
RecentWrite = TypedDict(
    "RecentWrite",
    {
        "at": str | None,
        "user": str | None,
        "side": str,
        "action": str,
        "from": str | None,
        "to": str | None,
        "outcome": str,
        "reason": str | None,
    },
)


class PoolMemberCoverage(TypedDict):
    """One sync user of the pool in a watch with notifications: ``active`` (holds a
    subscription), ``idle`` (a spare: the pool is larger than needed), ``pending`` (its
    subscription not made yet) or ``failed`` (``reason`` says why; its people moved or polled)."""

    username: str
    state: Literal["active", "idle", "pending", "failed"]
    people: int
    subscription: str | None
    reason: str | None


class TeamsNotifications(TypedDict):
    """How Teams changes arrive in a watch with ``--notify-url`` (``status --section
    notifications``); ``users_covered`` ≤ 650 per sync user of the pool; ``coverage`` reads
    "1,993 of 1,993 people by notifications, 4 sync users"."""

    mode: Literal["notifications", "polling", "stopped"]
    reason: str | None
    notify_url: str | None
    listen: str | None
    subscriptions: int
    users_covered: int
    users_matched: int
    users_polled: int
    coverage: str
    sync_users: list[PoolMemberCoverage]
    leftovers_removed: int
    next_renewal: str | None
    received: int
    dropped: int
    dropped_client_state: int
    dropped_untrusted: int
    overflows: int
    last_notification: str | None
    poll_interval_s: float
    updated: str | None


class ConnectBudget(TypedDict):
    """The Connect request budget as the last run saw it (``status``; sync/pacing.py)."""

    per_minute: float  # 0: no budget (testing only)
    used_last_minute: int
    queued_urgent: int  # requests waiting for a slot: writes and the reads they need
    queued_bulk: int  # bulk reads waiting
    oldest_urgent_wait_s: float
    sent_urgent: int
    sent_bulk: int
    queued_writes: int  # Connect writes planned and not yet answered
    oldest_write_wait_s: float
    at: float  # when it was recorded (Unix time)


class PollInterval(TypedDict):
    """The watch's Teams poll interval (``--interval auto``: chosen from Graph's budget)."""

    interval_s: float
    reads_per_poll: int
    reads_per_s: float
    budget_share: float  # the share of Graph's presence budget the polls take
    auto: bool
    polled_users: int  # matched users not covered by notifications


class StatusDocument(TypedDict):
    """``status -o json``. The state's keys are there only once a state database exists."""

    profile: str
    tenant: str | None
    app_client_id: str | None
    consent: str | None  # the date consent was granted or proven
    sync_user: str | None
    sync_user_validated: str | None
    enabled_direction: str  # a direction, or "disabled"
    state_db: str
    exists: bool
    pairs: NotRequired[int]
    sessions_teams: NotRequired[int]
    sessions_connect: NotRequired[int]
    subscriptions: NotRequired[int]
    connect_feed_unparsed: NotRequired[int]
    connect_feed_note: NotRequired[str | None]
    connect_budget: NotRequired[ConnectBudget | None]
    poll_interval: NotRequired[PollInterval | None]
    teams_notifications: NotRequired[TeamsNotifications | None]
    last_run: NotRequired[LastRun | None]
    next_renewal: NotRequired[str | None]  # the next write that keeps a session alive
    next_session_expiry: NotRequired[str | None]  # the earliest expiry
    outage: NotRequired[str | None]  # set while a watch waits for a service
    recent_writes: NotRequired[list[RecentWrite]]
    health: NotRequired[HealthReport]
    mapping_error: NotRequired[str]  # only when the profile's overrides are invalid


# --- users, doctor, consent --check -------------------------------------------------------------


class UserRow(TypedDict):
    """One row of ``users -o json`` (a list)."""

    email: str
    status: Literal["matched", "unmatched", "conflict", "sync_user"]
    azure_id: str  # "" when none; a conflict lists the ids, comma-separated
    connect_id: str
    detail: str


class DoctorCheck(TypedDict):
    name: str
    status: Literal["ok", "warn", "fail", "skip", "info"]
    detail: str
    remedy: str
    code: str  # the error code behind a failed check, else ""


class DoctorReport(TypedDict):
    """``doctor -o json``."""

    profile: str
    checks: list[DoctorCheck]
    worst: Literal["ok", "warn", "fail"]
    exit_code: int


class ConsentCheckRow(TypedDict):
    """One row of ``consent --check -o json`` (a list)."""

    permission: str
    kind: str  # application | delegated | "application (used)" (--as-app)
    granted: bool


# --- connect verify ---------------------------------------------------------------------------


class VerifyRowDoc(TypedDict):
    """One row of ``connect verify -o json``: an assumption and what the account showed."""

    check: str
    result: Literal["held", "differed", "failed", "skipped", "info"]
    detail: str
    observed: dict[str, Any]
    code: str
    hint: str


class VerifyFindings(TypedDict):
    """What the account does where no public source settles it; a key is there once its probe
    ran (docs/verification.md names each)."""

    api_host: NotRequired[dict[str, Any]]  # url, answered (bool | None), other
    directory_fields: NotRequired[Literal["accepted", "rejected"]]
    contact_types: NotRequired[dict[str, Any]]  # seen: {type: count}, people: [type]
    lenient_values: NotRequired[bool]
    read_only_statuses: NotRequired[dict[str, str]]  # status → "accepted" | "refused (N)"
    subscription_ttl: NotRequired[dict[str, Any]]  # requested_s, granted_s, expires_in_s
    subscription_renew: NotRequired[str]  # "renewed" | "failed (…)"
    subscription_delete: NotRequired[str]  # "deleted" | "already gone" | "failed (…)"
    feed_user_field: NotRequired[str | None]
    feed_event_scope: NotRequired[Literal["user", "session", "undetermined"]]


class VerifyDocument(TypedDict):
    """``connect verify -o json``."""

    profile: str
    user: str
    resource: str
    settle_s: float
    rows: list[VerifyRowDoc]
    left_behind: list[str]
    findings: VerifyFindings
    applied: dict[str, str]  # profile key → value written by --apply
    held: bool
    exit_code: int
    error: NotRequired[ErrorBody]


# --- config and mapping ---------------------------------------------------------------------------


class ConfigShow(TypedDict):
    """``config show -o json``: every profile key in ``settings``; secrets only as their state."""

    profile: str
    config_file: str
    settings: dict[str, Any]
    sync_username_env: str | None
    secrets: dict[str, str]  # name → "set (keyring|env|file)" | "not set"
    mapping_error: NotRequired[str]  # only when the profile's overrides are invalid


class ConfigPath(TypedDict):
    """``config path -o json``."""

    config_file: str
    exists: bool
    config_dir: str
    state_dir: str
    secrets_file: str


class ConfigProfile(TypedDict):
    """One row of ``config profiles -o json`` (a list)."""

    name: str
    active: bool
    tenant_id: str | None
    authority_url: str
    enabled_direction: str | None


class MappingShowRow(TypedDict):
    """One row of ``mapping show -o json`` (a list)."""

    direction: Literal["teams-to-connect", "connect-to-teams"]
    source: str
    source_label: str
    target: str
    target_label: str
    origin: Literal["seed", "extension", "override"]
    note: str


__all__ = [
    "ActionRow",
    "ConfigPath",
    "ConfigProfile",
    "ConfigShow",
    "ConsentCheckRow",
    "DisableDocument",
    "DoctorCheck",
    "DoctorReport",
    "ErrorBody",
    "ErrorDocument",
    "FailingUser",
    "Failure",
    "HealthReport",
    "LastRun",
    "MappingShowRow",
    "NextSessionWrite",
    "PoolMemberCoverage",
    "RecentWrite",
    "StatusDocument",
    "SyncDocument",
    "SyncSummary",
    "TeamsNotifications",
    "UserRow",
    "VerifyDocument",
    "VerifyFindings",
    "VerifyRowDoc",
]
