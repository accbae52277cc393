"""connect set / connect verify: the Connect side's credentials, and its unverified wire, checked.

Parses, reads the client secret safely (hidden prompt asked twice, --client-secret-stdin, or
PRESENCECTL_CONNECT_CLIENT_SECRET — never an argument), and renders what
``presencectl.connect.verify`` returns. No HTTP here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from presencectl.cli.context import AppContext, app_context
from presencectl.cli.options import (
    NoInputOption,
    OutputFormat,
    OutputOption,
    ProfileOption,
    QuietOption,
    VerboseOption,
    group_options,
)

connect_app = typer.Typer(
    help="Give presencectl the Connect Extend API client, and verify the Connect API on your "
    "account.",
    no_args_is_help=True,
)
connect_app.callback()(group_options)

SECRET_ENV = "PRESENCECTL_CONNECT_CLIENT_SECRET"
_TOKEN_COLUMNS = ["purpose", "scope", "result", "detail"]
_VERIFY_COLUMNS = ["check", "result", "detail"]
_MARKS = {"held": "✓", "differed": "✗", "failed": "✗", "skipped": "-", "info": "·"}


def _note(app_ctx: AppContext, message: str) -> None:
    if app_ctx.verbosity >= 0:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def _read_secret(app_ctx: AppContext, secret_stdin: bool) -> tuple[str, bool]:
    """(secret, from the environment). A terminal is asked twice; the answers must match."""
    from presencectl.errors import UsageError

    if secret_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise UsageError("stdin held no client secret", hint="pipe the secret, one line")
        return secret, False
    env = os.environ.get(SECRET_ENV)
    if env:
        return env, True
    what = "Connect client secret"
    secret = app_ctx.prompt_secret(what, flag="--client-secret-stdin", env=SECRET_ENV)
    again = app_ctx.prompt_secret(what + " (again)", flag="--client-secret-stdin", env=SECRET_ENV)
    if not secret:
        raise UsageError("the client secret is empty", hint="paste the secret from Control Panel")
    if secret != again:
        raise UsageError(
            "the two secrets differ; nothing was stored", hint="run `connect set` again"
        )
    return secret, False


@connect_app.command("set")
def connect_set(
    ctx: typer.Context,
    client_id: str = typer.Option(
        ..., "--client-id", help="Client id of the Extend API client (Control Panel)."
    ),
    client_secret_stdin: bool = typer.Option(
        False, "--client-secret-stdin", help="Read the client secret from stdin (one line)."
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Store the Extend API client (id in the profile, secret in the keyring) and get a token
    for each scope.

    The secret comes from a hidden prompt asked twice, from stdin (--client-secret-stdin), or
    from PRESENCECTL_CONNECT_CLIENT_SECRET (CI: used as is, never written to disk).

    Examples:

    \b
      presencectl connect set --client-id 3fQ…
      printf '%s\\n' "$SECRET" | presencectl connect set --client-id 3fQ… --client-secret-stdin
    """
    from presencectl import secrets
    from presencectl.config import save_profile
    from presencectl.connect.verify import check_tokens
    from presencectl.errors import AuthError, UsageError

    app_ctx = app_context(ctx)
    client_id = client_id.strip()
    if not client_id:
        raise UsageError("--client-id is empty", hint="pass the client id from Control Panel")
    profile = app_ctx.load_profile(must_exist=False)
    secret, from_env = _read_secret(app_ctx, client_secret_stdin)
    profile.connect_client_id = client_id
    save_profile(profile)
    if from_env:
        stored_in = f"environment ({SECRET_ENV}; not stored)"
    else:
        secrets.set_secret(profile.name, secrets.CONNECT_CLIENT_SECRET, secret)
        stored_in = secrets.secret_source(profile.name, secrets.CONNECT_CLIENT_SECRET) or "?"
        if os.environ.get(SECRET_ENV):
            _note(app_ctx, f"note: {SECRET_ENV} is set and wins over the stored secret")
    tokens = check_tokens(profile, client_id=client_id, secret=secret)
    failed = [t for t in tokens if t.result != "ok"]
    error = None
    if failed:
        first = failed[0]
        error = AuthError(
            f"Connect gave no token for {first.scope} ({first.purpose}): {first.detail}",
            hint=(first.hint + "; " if first.hint else "")
            + "the id and secret are stored: once fixed, run `presencectl connect set` again",
            code=first.code or "connect_auth_failed",
        )
    if app_ctx.json:
        document: dict[str, Any] = {
            "profile": profile.name,
            "connect_client_id": client_id,
            "secret_stored_in": stored_in,
            "tokens": tokens,
        }
        if error is not None:
            document["error"] = error.to_dict()
            error.in_document = True
        app_ctx.render(document)
    else:
        _note(
            app_ctx,
            f"Stored client id {client_id} in profile '{profile.name}'; secret: {stored_in}.",
        )
        app_ctx.render(
            tokens, columns=_TOKEN_COLUMNS, title=f"Connect tokens for client {client_id}"
        )
    if error is not None:
        raise error
    _note(app_ctx, "Next: `presencectl connect verify --user <a test user's email>`.")


@connect_app.command("verify")
def connect_verify(
    ctx: typer.Context,
    user: str = typer.Option(
        ...,
        "--user",
        help="Email of a Connect user to test on (restored afterwards); best an idle one.",
    ),
    settle: float = typer.Option(
        15.0, "--settle", help="Seconds to wait for a write to show in Connect."
    ),
    user_id: str | None = typer.Option(
        None,
        "--user-id",
        help="The test user's Connect id: the presence and feed rows run even when the "
        "directory fails.",
    ),
    apply: bool = typer.Option(
        False,
        "--apply",
        help="Write the findings that are profile settings (connect_feed_user_field, "
        "connect_feed_event_scope, connect_directory_fields) to the profile.",
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Check each unverified assumption about the Connect API on your account.

    Writes each value the mapping can write to the test user under presencectl's session, reads
    it back, deletes it; checks tokens, directory paging, aggregation and the change feed. Leaves
    nothing behind (also on Ctrl-C). Exit 0: all held; 5: something differed; 4: sign-in;
    3: configuration. `-o json` gives a report to attach to a bug.

    Examples:

    \b
      presencectl connect verify --user test.user@contoso.com
      presencectl -o json connect verify --user test.user@contoso.com > verify.json
      presencectl connect verify --user test.user@contoso.com --apply
    """
    from presencectl.connect.verify import VerifyOptions, apply_findings, run_verify
    from presencectl.errors import ExitCode, PresencectlError, UsageError

    app_ctx = app_context(ctx)
    if settle <= 0:
        raise UsageError("--settle must be positive", hint="e.g. --settle 15")
    if "@" not in user:
        raise UsageError(f"--user {user!r} is not an email", hint="pass the test user's email")
    profile = app_ctx.load_profile()

    def progress(row: Any) -> None:
        _note(app_ctx, f"{_MARKS.get(row.result, '·')} {row.check}: {row.detail}")

    if user_id is not None and not user_id.strip():
        raise UsageError("--user-id is empty", hint="pass the test user's Connect id")
    report = run_verify(
        profile,
        VerifyOptions(user=user, settle_s=settle, user_id=user_id.strip() if user_id else None),
        on_row=None if app_ctx.json else progress,
    )
    if apply:
        applied = apply_findings(profile, report)
        _note(
            app_ctx,
            f"Profile '{profile.name}': "
            + (", ".join(f"{k} = {v!r}" for k, v in applied.items()) or "nothing to set"),
        )
    code = report.exit_code
    error = None
    if code:
        first = next((r for r in report.rows if r.result == "failed"), None)
        if first is not None:
            error = PresencectlError(
                f"{first.check}: {first.detail}",
                code=first.code or "connect_verify_failed",
                hint=first.hint or "fix this first: the checks after it were skipped",
                exit_code=ExitCode(code),
            )
        else:
            differed = [r.check for r in report.rows if r.result == "differed"]
            error = PresencectlError(
                "Connect differs from what presencectl assumes: "
                + ", ".join(differed)
                + (f"; left behind: {', '.join(report.left_behind)}" if report.left_behind else ""),
                code="connect_assumption_differed",
                hint="attach `presencectl -o json connect verify …` to a bug report; "
                "docs/verification.md says what each row means",
                exit_code=ExitCode(code),
            )
    if app_ctx.json:
        document = report.to_dict()
        if error is not None:
            document["error"] = error.to_dict()
            error.in_document = True
        app_ctx.render(document)
    else:
        rows = [{"check": r.check, "result": r.result, "detail": r.detail} for r in report.rows]
        app_ctx.render(
            rows,
            columns=_VERIFY_COLUMNS,
            title=f"connect verify: profile {report.profile}, user {report.user}",
        )
        findings = [
            {"finding": name, "value": _finding_text(value)}
            for name, value in report.findings.items()
        ]
        if findings:
            app_ctx.render(
                findings, columns=_FINDING_COLUMNS, title="What the account does (findings)"
            )
    if error is not None:
        raise error
    _note(app_ctx, "Every assumption held. Next: `presencectl enable`.")


_FINDING_COLUMNS = ["finding", "value"]


def _finding_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_finding_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    return "—" if value is None else str(value)


def register(app: typer.Typer) -> None:
    app.add_typer(connect_app, name="connect")
