"""The ``-o json`` documents are what presencectl/shapes.py says, and docs/ci.md shows nothing else.

The real commands run against the sandbox (the operator's flow: setup-azure, connect set,
consent --check with and without --as-app, sync-user set / validate, enable, sync, status in
every section, users, doctor, config show / path / profiles, mapping show, disable) and every
document is checked against its TypedDict: each required key present, no key the type does not
declare (new keys are added to shapes.py first), every value of the declared type. The JSON
examples of docs/ci.md "JSON shapes" (and doctor's in docs/troubleshooting.md) are checked the
same way, except that an example may leave keys out.
"""

from __future__ import annotations

import json
import re
import socket
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from presencectl import shapes

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "admin@contoso.example"
NEW_PASSWORD = "Shapes-Checked-0nce!"
# Shapes whose objects may carry keys the type does not name (documented as open).
OPEN = (shapes.HealthReport,)


def problems(value: Any, tp: Any, where: str = "$", *, partial: bool = False) -> list[str]:
    """Why ``value`` (decoded JSON) is not a ``tp``; empty when it is.

    ``partial``: keys may be missing (a documented example that leaves some out)."""
    if tp is Any:
        return []
    if tp is None or tp is type(None):
        return [] if value is None else [f"{where}: {value!r} is not null"]
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        found = [problems(value, alt, where, partial=partial) for alt in get_args(tp)]
        if any(not f for f in found):
            return []
        return [f"{where}: {value!r} is none of {tp}"]
    if origin is Literal:
        return [] if value in get_args(tp) else [f"{where}: {value!r} not in {get_args(tp)}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__} is not a list"]
        (item,) = get_args(tp)
        return [p for i, v in enumerate(value) for p in problems(v, item, f"{where}[{i}]",
                                                                 partial=partial)]  # fmt: skip
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__} is not an object"]
        _, item = get_args(tp)
        return [p for k, v in value.items() for p in problems(v, item, f"{where}.{k}",
                                                              partial=partial)]  # fmt: skip
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__} is not an object ({tp.__name__})"]
        hints = get_type_hints(tp)
        out = []
        if not partial:
            out += [f"{where}: {tp.__name__} key {k!r} missing"
                    for k in sorted(tp.__required_keys__) if k not in value]  # fmt: skip
        for key, item in value.items():
            if key in hints:
                out += problems(item, hints[key], f"{where}.{key}", partial=partial)
            elif tp not in OPEN:
                out.append(f"{where}: key {key!r} is not declared in shapes.{tp.__name__}")
        return out
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a boolean"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not an integer"]
    if tp is float:  # JSON numbers: 0 and 0.0 are both numbers
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not a number"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    raise TypeError(f"{where}: the checker does not know {tp!r}")


# --- the checker can fail ------------------------------------------------------------------------


def test_the_checker_catches_missing_extra_and_mistyped_keys() -> None:
    good = {"code": "usage", "message": "m", "hint": "h"}
    assert problems({"error": good}, shapes.ErrorDocument) == []
    assert problems({"error": {"code": "usage", "message": "m"}}, shapes.ErrorDocument)
    assert problems({"error": {**good, "extra": 1}}, shapes.ErrorDocument)
    assert problems({"error": {**good, "code": 3}}, shapes.ErrorDocument)
    assert problems({"error": {"code": "usage"}}, shapes.ErrorDocument, partial=True) == []
    row = {"email": "a@b", "status": "matched", "azure_id": "", "connect_id": "", "detail": ""}
    assert problems([row], list[shapes.UserRow]) == []
    assert problems([{**row, "status": "maybe"}], list[shapes.UserRow])
    assert problems({"at": None, "user": "u", "why": "w"}, shapes.NextSessionWrite) == []
    assert problems({"at": 1, "user": "u", "why": "w"}, shapes.NextSessionWrite)
    assert problems(True, int) and problems(1, bool) and problems(None, str)
    action = {"user": "u", "side": "teams", "kind": "set", "from": None, "to": "Busy/InACall",
              "reason": "r", "purpose": "mirror", "outcome": "ok"}  # fmt: skip
    assert problems(action, shapes.ActionRow) == []
    assert problems({**action, "error": None}, shapes.ActionRow)  # NotRequired is not nullable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the real commands ---------------------------------------------------------------------------


@pytest.fixture
def documents(cli: Any) -> Iterator[dict[str, tuple[Any, Any]]]:
    """Each command's ``-o json`` document, decoded, with the shape it must have."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=8, seed=3, auto_approve=ADMIN, allow_http_notifications=True) as sb:
        info = sb.profile_info()
        sb.write_profile("sandbox")
        docs: dict[str, tuple[Any, Any]] = {}

        def run(*args: str, input: str = "", ok: tuple[int, ...] = (0,)) -> Any:
            result = cli("--profile", "sandbox", *args, input=input)
            assert result.exit_code in ok, (args, result.stdout, result.stderr)
            return result

        def doc(name: str, shape: Any, *args: str, ok: tuple[int, ...] = (0,)) -> Any:
            result = run("-o", "json", *args, ok=ok)
            docs[name] = (json.loads(result.stdout), shape)
            return docs[name][0]

        doc("error (no such profile)", shapes.ErrorDocument, "--profile", "nope", "status",
            ok=(3,))  # fmt: skip
        doc("config path", shapes.ConfigPath, "config", "path")
        doc("mapping show", list[shapes.MappingShowRow], "mapping", "show")
        run("setup-azure", "--no-input")
        run("connect", "set", "--client-id", info["connect_client_id"], "--client-secret-stdin",
            input=info["connect_client_secret"] + "\n")  # fmt: skip
        doc("connect verify", shapes.VerifyDocument, "connect", "verify", "--user", ADMIN,
            "--settle", "3")  # fmt: skip
        doc("consent --check", list[shapes.ConsentCheckRow], "consent", "--check")
        doc("consent --check --as-app", list[shapes.ConsentCheckRow], "consent", "--check",
            "--as-app")  # fmt: skip
        sb.control.post(
            f"/_sandbox/users/{info['sync_user']}/password", json={"password": NEW_PASSWORD}
        ).raise_for_status()
        run("sync-user", "set", "--username", info["sync_user"], "--password-stdin",
            input=NEW_PASSWORD + "\n")  # fmt: skip
        run("sync-user", "validate")
        run("enable")
        doc("status (no state yet)", shapes.StatusDocument, "status")
        doc("sync --dry-run", shapes.SyncDocument, "sync", "--dry-run", ok=(0, 5))
        person = next(p for p in sb.world.people if p.azure_id and p.connect_id
                      and p.email not in (ADMIN, info["sync_user"]))  # fmt: skip
        sb.control.post(
            "/_sandbox/connect/presence", json={"user": person.connect_email, "status": "onphone"}
        ).raise_for_status()
        doc("sync", shapes.SyncDocument, "sync", ok=(0, 5))
        # A short watch with Graph change notifications, so status has its notifications part.
        port = free_port()
        run("-o", "json", "sync", "--watch", "--max-cycles", "2", "--interval", "0.5",
            "--reconcile-interval", "0.5",
            "--notify-url", f"http://127.0.0.1:{port}/presencectl",
            "--listen", f"127.0.0.1:{port}", ok=(0, 5))  # fmt: skip
        doc("status", shapes.StatusDocument, "status")
        doc("status --section status", shapes.StatusDocument, "status", "--section", "status")
        doc("status --section health", shapes.HealthReport, "status", "--section", "health")
        doc("status --section notifications", shapes.TeamsNotifications, "status", "--section",
            "notifications")  # fmt: skip
        doc("status --section recent", list[shapes.RecentWrite], "status", "--section", "recent")
        doc("users", list[shapes.UserRow], "users")
        doc("doctor", shapes.DoctorReport, "doctor", ok=(0, 1, 3, 4))
        doc("config show", shapes.ConfigShow, "config", "show")
        doc("config profiles", list[shapes.ConfigProfile], "config", "profiles")
        doc("disable", shapes.DisableDocument, "disable", "--yes", ok=(0, 5))
        yield docs


def test_every_json_document_has_its_documented_shape(
    documents: dict[str, tuple[Any, Any]],
) -> None:
    found = {name: problems(value, shape) for name, (value, shape) in documents.items()}
    assert {name: p for name, p in found.items() if p} == {}
    # The flow really produced what the shapes describe, not empty lists that prove nothing.
    sync = documents["sync"][0]
    assert sync["actions"] and any(a["to"] == "Busy/InACall" for a in sync["actions"])
    status = documents["status"][0]
    assert status["exists"] and "health" in status and status["last_run"] is not None
    assert status["teams_notifications"] is not None, "the watch recorded how Teams came in"
    assert documents["status (no state yet)"][0]["exists"] is False
    verify = documents["connect verify"][0]
    assert verify["findings"]["feed_user_field"] == "userId" and verify["rows"]
    assert documents["status --section recent"][0], "the sync's writes are in the audit"
    assert any(r["status"] == "matched" for r in documents["users"][0])
    assert {c["permission"] for c in documents["consent --check"][0]} >= {"User.Read.All"}
    assert documents["doctor"][0]["checks"]
    assert documents["config profiles"][0][0]["active"] is True


# --- what the docs show --------------------------------------------------------------------------

# docs/ci.md "JSON shapes": each heading with a JSON example → the shape it shows.
CI_EXAMPLES: dict[str, Any] = {
    "Errors": shapes.ErrorDocument,
    "`sync` (one-shot)": shapes.SyncDocument,
    "`status`": shapes.StatusDocument,
    "`config show`": shapes.ConfigShow,
    "`config path`": shapes.ConfigPath,
    "`config profiles`": list[shapes.ConfigProfile],
    "`mapping show`": list[shapes.MappingShowRow],
}


def _json_examples(page: str, start: str, end: str) -> dict[str, list[Any]]:
    """heading → the JSON examples under it, between the headings ``start`` and ``end``."""
    text = (ROOT / "docs" / page).read_text("utf-8")
    section = text[text.index(start) : text.index(end)]
    out: dict[str, list[Any]] = {}
    heading = ""
    for part in re.split(r"^(#{2,3} .+)$", section, flags=re.M):
        if re.match(r"#{2,3} ", part):
            heading = part.lstrip("#").strip()
            continue
        for block in re.findall(r"```json\n(.*?)```", part, flags=re.S):
            out.setdefault(heading, []).append(json.loads(block))
    return out


def test_ci_md_shows_only_keys_the_shapes_declare() -> None:
    examples = _json_examples("ci.md", "## JSON shapes", "## A sample pipeline")
    assert set(examples) == set(CI_EXAMPLES), "a JSON example in docs/ci.md without a shape here"
    found = {}
    for heading, blocks in examples.items():
        for block in blocks:
            if heading == "`status`":
                block.pop("...")  # the page's "and the other keys" placeholder
            found[heading] = problems(block, CI_EXAMPLES[heading], partial=True)
    assert {h: p for h, p in found.items() if p} == {}


def test_ci_md_examples_name_the_keys_a_script_relies_on() -> None:
    """The keys docs/ci.md's prose and pipeline use are in the shapes, required where promised."""
    assert {"code", "message", "hint"} <= shapes.ErrorBody.__required_keys__
    assert {"failed", "adopted", "cleared", "interrupted", "actions", "failures"} <= (
        shapes.SyncDocument.__required_keys__
    )
    assert "error" in shapes.SyncDocument.__optional_keys__  # partial_sync rides along
    status_optional = shapes.StatusDocument.__optional_keys__
    assert {"next_renewal", "next_session_expiry", "health"} <= status_optional
    assert {"last_cycle_age_s", "failing_users"} <= shapes.HealthReport.__required_keys__
    assert "origin" in shapes.MappingShowRow.__required_keys__


def test_doctor_example_in_troubleshooting_has_the_shape() -> None:
    examples = _json_examples("troubleshooting.md", "## presencectl doctor", "| check |")
    (block,) = examples["presencectl doctor"]
    assert problems(block, shapes.DoctorReport) == []


def test_every_shape_is_exported_and_checkable() -> None:
    for name in shapes.__all__:
        tp = getattr(shapes, name)
        assert is_typeddict(tp), name
        for key, hint in get_type_hints(tp).items():  # the checker knows every type used
            assert isinstance(problems(None, hint, key), list)
    assert typing.get_type_hints(shapes.ActionRow)["from"] == str | None
