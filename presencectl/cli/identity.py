"""setup-azure, consent, sync-user: the Azure side of the seed's setup steps, from the terminal.

Parses options, reads passwords safely (hidden prompt, --password-stdin or the environment — never
an argument), and renders what presencectl.identity returns. The device-code message, the
consent URL and progress go to stderr; the summary goes to stdout.
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

sync_user_app = typer.Typer(
    help="The dedicated Azure sync users (one, or a pool): add, sign in, validate, list, remove.",
    no_args_is_help=True,
)
sync_user_app.callback()(group_options)

SYNC_PASSWORD_ENV = "PRESENCECTL_SYNC_PASSWORD"
_MARKS = {
    "ok": "✓",
    "created": "+",
    "updated": "~",
    "unchanged": "=",
    "failed": "✗",
    "skipped": "-",
    "waiting": "…",
    "warning": "!",
    "confirm": "?",
}


def _err(message: str) -> None:
    """One line on stderr, printed as is (no markup: msal's message and URLs stay intact)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _note(app_ctx: AppContext, message: str) -> None:
    if app_ctx.verbosity >= 0:
        _err(message)


def _setup_summary(changed: bool) -> str:
    if changed:
        return "Setup changed the tenant as listed above."
    return "Nothing changed: the app registration, its secret and consent were already in place."


def _progress(app_ctx: AppContext) -> Any:
    def on_step(step: Any) -> None:
        if app_ctx.verbosity < 0:
            return
        line = f"{_MARKS.get(step.result, '·')} {step.step}: {step.detail}"
        if step.result in ("failed", "warning", "confirm") and step.remedy:
            line += f"\n    → {step.remedy}"
        _err(line)

    return on_step


def _device_message(prompt: Any) -> None:
    # Always shown, even with -q: without it nobody can finish the sign-in.
    _err(str(prompt))


def _consent_url_message(url: str) -> None:
    _err("Open this URL as a Global Administrator and accept the permissions:\n" + url)
    _err("Waiting for the answer on the loopback redirect…")


def setup_azure(
    ctx: typer.Context,
    tenant: str | None = typer.Option(None, "--tenant", help="Tenant id or verified domain."),
    device_code: bool = typer.Option(
        True,
        "--device-code/--browser",
        help="Sign the admin in with a device code (default) or a browser.",
    ),
    app_name: str = typer.Option(
        "presencectl presence sync", "--app-name", help="Display name of the app registration."
    ),
    client_id: str | None = typer.Option(None, "--client-id", help="Reuse this app registration."),
    connect_account_email: str | None = typer.Option(
        None,
        "--connect-account-email",
        help="Email of the Connect Account Contact (its Security Manager role is confirmed in "
        "Control Panel).",
    ),
    bootstrap_client_id: str | None = typer.Option(
        None,
        "--bootstrap-client-id",
        help="Public client the admin signs in through before our app exists "
        "(default: Microsoft Graph Command Line Tools).",
    ),
    consent_url: bool = typer.Option(
        False,
        "--consent-url",
        help="Grant consent by the admin-consent URL instead of through Graph.",
    ),
    consent_timeout: float = typer.Option(
        600.0, "--consent-timeout", help="Seconds to wait for --consent-url."
    ),
    rotate_secret: bool = typer.Option(
        False,
        "--rotate-credential",
        "--rotate-secret",
        help="Only make a new client secret (or app certificate), prove it, and revoke the "
        "previous one.",
    ),
    credential: str = typer.Option(
        "secret",
        "--credential",
        help="How the app signs in: secret (default), certificate or federated (no secret).",
    ),
    certificate_file: str | None = typer.Option(
        None,
        "--certificate-file",
        metavar="PEM|PFX",
        help="certificate: use this key and certificate instead of making one "
        "(PFX password in PRESENCECTL_CERTIFICATE_PASSWORD).",
    ),
    federated_issuer: str | None = typer.Option(
        None, "--federated-issuer", metavar="URL", help="federated: the token issuer (OIDC URL)."
    ),
    federated_subject: str | None = typer.Option(
        None, "--federated-subject", help="federated: the token's subject (sub claim)."
    ),
    federated_token_file: str | None = typer.Option(
        None,
        "--federated-token-file",
        metavar="PATH",
        help="federated: where the token is read at each sign-in (profile federated_token_file).",
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Sign in as the Azure admin, check prerequisites, create the app and grant consent.

    A new client secret (missing, expiring, or --rotate-secret) is proven before the one
    setup-azure made earlier is revoked, so a leaked secret stops working.

    Examples:

    \b
      presencectl setup-azure --tenant contoso.onmicrosoft.com
      presencectl --no-input -o json setup-azure --client-id 1b2c…
      presencectl setup-azure --rotate-secret
      presencectl setup-azure --credential certificate
      presencectl setup-azure --credential federated --federated-issuer URL \\
          --federated-subject system:serviceaccount:presencectl-contoso:presencectl \\
          --federated-token-file /var/run/secrets/azure/tokens/azure-identity-token
    """
    from presencectl.errors import UsageError
    from presencectl.identity.setup import SetupOptions
    from presencectl.identity.setup import setup_azure as run

    app_ctx = app_context(ctx)
    if rotate_secret:
        extra = [
            flag
            for flag, given in (
                ("--tenant", tenant), ("--client-id", client_id),
                ("--connect-account-email", connect_account_email),
                ("--bootstrap-client-id", bootstrap_client_id), ("--consent-url", consent_url),
            )
            if given
        ]  # fmt: skip
        if extra:
            raise UsageError(
                f"--rotate-secret does only the secret; {', '.join(extra)} would be ignored",
                hint="run `presencectl setup-azure --rotate-secret` alone (the profile says "
                "which tenant and app)",
            )
        _rotate_secret(app_ctx, device_code)
        return
    _check_credential_flags(
        credential, certificate_file, federated_issuer, federated_subject, federated_token_file
    )
    profile = app_ctx.load_profile(must_exist=False)
    if tenant:
        profile.tenant_id = tenant
    if not profile.tenant_id:
        raise UsageError("which tenant?", hint="pass --tenant <tenant id or verified domain>")
    if bootstrap_client_id:
        profile.bootstrap_client_id = bootstrap_client_id
    report = run(
        profile,
        SetupOptions(
            app_name=app_name,
            client_id=client_id,
            connect_account_email=connect_account_email,
            consent_url=consent_url,
            consent_timeout=consent_timeout,
            credential=credential,
            certificate_file=certificate_file,
            federated_issuer=federated_issuer,
            federated_subject=federated_subject,
            federated_token_file=federated_token_file,
        ),
        method="device_code" if device_code else "browser",
        on_message=_device_message,
        on_step=_progress(app_ctx),
        on_consent_url=_consent_url_message,
    )
    if app_ctx.json:
        app_ctx.render(report)
        _note(app_ctx, _setup_summary(report.changed))
        return
    _render_steps(app_ctx, report)
    _note(app_ctx, _setup_summary(report.changed))
    _note(
        app_ctx,
        "Next: `presencectl consent --check`, then `presencectl sync-user set --username U`.",
    )


def _check_credential_flags(
    credential: str,
    certificate_file: str | None,
    issuer: str | None,
    subject: str | None,
    token_file: str | None,
) -> None:
    from presencectl.config import APP_CREDENTIALS
    from presencectl.errors import UsageError

    if credential not in APP_CREDENTIALS:
        raise UsageError(
            f"--credential {credential!r} is not a credential kind",
            hint="one of: " + ", ".join(APP_CREDENTIALS),
        )
    if certificate_file and credential != "certificate":
        raise UsageError("--certificate-file goes with --credential certificate")
    federated_flags = [f for f, v in (("--federated-issuer", issuer),
                       ("--federated-subject", subject),
                       ("--federated-token-file", token_file)) if v]  # fmt: skip
    if credential != "federated" and federated_flags:
        raise UsageError(f"{', '.join(federated_flags)} go with --credential federated")
    if credential == "federated" and not (issuer and subject):
        raise UsageError(
            "--credential federated needs --federated-issuer and --federated-subject",
            hint="the issuer URL and the subject of the tokens your platform gives the pod or "
            "job (Kubernetes: system:serviceaccount:NAMESPACE:NAME)",
        )


def _render_steps(app_ctx: AppContext, report: Any) -> None:
    """The steps as a table on stdout — unless stdout is the terminal that already showed each
    step as it happened (stderr progress): then once is enough."""
    if (
        app_ctx.output == "table"
        and sys.stdout.isatty()
        and sys.stderr.isatty()
        and app_ctx.verbosity >= 0
    ):
        return
    app_ctx.render(
        [{"step": s.step, "result": s.result, "detail": s.detail} for s in report.steps],
        title=f"setup-azure: tenant {report.tenant_id}, app {report.client_id}",
    )


def _rotate_secret(app_ctx: AppContext, device_code: bool) -> None:
    from presencectl.identity.setup import rotate_secret

    report = rotate_secret(
        app_ctx.load_profile(),
        method="device_code" if device_code else "browser",
        on_message=_device_message,
        on_step=_progress(app_ctx),
    )
    if app_ctx.json:
        app_ctx.render(report)
        return
    _render_steps(app_ctx, report)


def logout(
    ctx: typer.Context,
    all_profiles: bool = typer.Option(
        False, "--all", help="Every profile in config.toml, not only the active one."
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Remove the Azure admin's cached tokens (refresh token included) from this machine.

    setup-azure and consent keep the admin signed in (msal's token cache in the keyring or the
    0600 secrets file); logout ends that. The app's secret and the sync user stay.

    \b
    Examples:
      presencectl logout
      presencectl logout --all -o json
    """
    from presencectl.config import list_profiles, profile_name
    from presencectl.identity.msal_apps import ADMIN, forget_cache

    app_ctx = app_context(ctx)
    names = list_profiles() if all_profiles else [profile_name(app_ctx.profile_name)]
    rows = [
        {"profile": name, "admin_token_cache": "removed" if forget_cache(name, ADMIN) else "none"}
        for name in names
    ]
    app_ctx.render(rows, columns=["profile", "admin_token_cache"])
    removed = [r["profile"] for r in rows if r["admin_token_cache"] == "removed"]
    if removed:
        _note(
            app_ctx,
            "Signed out: the admin's cached tokens of "
            + ", ".join(removed)
            + " are removed; setup-azure and consent will ask for a sign-in again.",
        )
    else:
        _note(app_ctx, "Nothing to remove: no admin tokens were cached.")


def _admin_cached(profile_name: str) -> bool:
    """True when an admin sign-in is cached for the profile (consent --check can use it)."""
    from presencectl import secrets
    from presencectl.identity.msal_apps import ADMIN, cache_secret_name

    return bool(secrets.get_secret(profile_name, cache_secret_name(ADMIN)))


def consent(
    ctx: typer.Context,
    check: bool = typer.Option(
        False,
        "--check",
        help="Only verify: the app signs in, and Graph lists what is granted to it.",
    ),
    device_code: bool = typer.Option(
        True, "--device-code/--browser", help="How the admin signs in."
    ),
    consent_url: bool = typer.Option(
        False, "--consent-url", help="Grant by the admin-consent URL."
    ),
    consent_timeout: float = typer.Option(
        600.0, "--consent-timeout", help="Seconds to wait for --consent-url."
    ),
    as_app: bool = typer.Option(
        False,
        "--as-app",
        help="With --check: no admin sign-in; prove the permissions by using them with the "
        "app's token (what CI runs; the default under --no-input when no admin is signed in).",
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Grant (or with --check verify) the presence permissions of the app.

    Examples:

    \b
      presencectl consent
      presencectl consent --check -o json
      presencectl --no-input consent --check --as-app     (a pipeline: no admin)
    """
    from presencectl.identity import setup

    app_ctx = app_context(ctx)
    profile = app_ctx.load_profile()
    if check and (as_app or (not app_ctx.interactive and not _admin_cached(profile.name))):
        from presencectl.identity.app_proof import prove_app_permissions

        if not as_app:
            _note(
                app_ctx,
                "No admin is signed in here and prompting is off: proving the app's "
                "permissions by using them (--as-app).",
            )
        proven = prove_app_permissions(profile)
        app_ctx.render(proven, title="App permissions (proven by using them)")
        _note(app_ctx, "Writing presence (Presence.ReadWrite.All) is proven by the first sync.")
        return
    if check:
        checks = setup.check_app_permissions(
            profile,
            method="device_code" if device_code else "browser",
            on_message=_device_message,
        )
        app_ctx.render(checks, title="App permissions (granted, as Graph lists them)")
        return
    step = setup.consent(
        profile,
        method="device_code" if device_code else "browser",
        use_url=consent_url,
        on_message=_device_message,
        on_step=_progress(app_ctx),
        on_consent_url=_consent_url_message,
        timeout=consent_timeout,
    )
    app_ctx.render({"step": step.step, "result": step.result, "detail": step.detail})


def _read_password(app_ctx: AppContext, password_stdin: bool) -> tuple[str, bool]:
    """(password, store it): a password from the environment is used, never stored."""
    if password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n"), True
    env = os.environ.get(SYNC_PASSWORD_ENV)
    if env:
        return env, False
    from presencectl.errors import UsageError

    first = app_ctx.prompt_secret(
        "Sync user password", flag="--password-stdin", env=SYNC_PASSWORD_ENV
    )
    # Asked twice, as passwd does: a typo would otherwise surface months later, at a sign-in.
    again = app_ctx.prompt_secret(
        "Sync user password (again)", flag="--password-stdin", env=SYNC_PASSWORD_ENV
    )
    if first != again:
        raise UsageError("the two passwords differ; nothing was stored", hint="run it again")
    return first, True


@sync_user_app.command("set")
def sync_user_set(
    ctx: typer.Context,
    username: str = typer.Option(
        ...,
        "--username",
        envvar="PRESENCECTL_SYNC_USERNAME",
        help="The sync user's principal name.",
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from stdin."
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Store the sync user's name and password (hidden prompt, stdin or PRESENCECTL_SYNC_PASSWORD).

    Examples:

    \b
      presencectl sync-user set --username presence-sync@contoso.onmicrosoft.com
      printf '%s\\n' "$PW" | presencectl sync-user set --username U --password-stdin
    """
    from presencectl.identity.sync_user import pool_members, store_sync_user

    app_ctx = app_context(ctx)
    profile = app_ctx.load_profile(must_exist=False)
    password, store = _read_password(app_ctx, password_stdin)
    before = [m.username for m in pool_members(profile)]
    status = store_sync_user(profile, username, password, store_password=store)
    left = [u for u in before if u.lower() != status.username.lower()]
    stored_in = status.password_source if store else "not stored (read from the environment)"
    app_ctx.render({"username": status.username, "password_stored_in": stored_in})
    if left:
        _note(app_ctx, f"The pool is this one sync user again: {', '.join(left)} left it.")
    _note(app_ctx, "Next: `presencectl sync-user validate`.")


def _sign_in_kind(password_stdin: bool, device_code: bool, browser: bool) -> str:
    from presencectl.errors import UsageError

    chosen = [
        kind
        for kind, given in (
            ("password", password_stdin), ("device_code", device_code), ("browser", browser)
        )
        if given
    ]  # fmt: skip
    if len(chosen) > 1:
        raise UsageError(
            "choose one way to sign in", hint="--password-stdin, --device-code or --browser"
        )
    return chosen[0] if chosen else "password"


def _member_password(app_ctx: AppContext, password_stdin: bool) -> str:
    """A pool member's password: stdin or the hidden prompt (the environment variable is the
    first sync user's, `sync-user set`)."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    from presencectl.errors import UsageError

    first = app_ctx.prompt_secret("Sync user password", flag="--password-stdin")
    again = app_ctx.prompt_secret("Sync user password (again)", flag="--password-stdin")
    if first != again:
        raise UsageError("the two passwords differ; nothing was stored", hint="run it again")
    return first


def _status_row(status: Any, sign_in: str) -> dict[str, Any]:
    return {
        "username": status.username,
        "sign_in": sign_in,
        "object_id": status.object_id,
        "presence": status.presence,
        "scopes": status.scopes,
        "validated": status.validated,
    }


@sync_user_app.command("add")
def sync_user_add(
    ctx: typer.Context,
    username: str | None = typer.Option(None, "--username", help="The user's principal name."),
    password_stdin: bool = typer.Option(
        False,
        "--password-stdin",
        help="Sign in with a password, read from stdin (the default asks for it).",
    ),
    device_code: bool = typer.Option(
        False,
        "--device-code",
        help="Sign the user in once by device code (MFA as asked; only its refresh token is kept).",
    ),
    browser: bool = typer.Option(
        False, "--browser", help="Sign the user in once in a browser (as --device-code)."
    ),
    create: bool = typer.Option(
        False,
        "--create",
        help="Create the accounts through Graph with the admin's sign-in (unlicensed, "
        "'presencectl sync N', generated passwords kept in the secret store).",
    ),
    count: int = typer.Option(1, "--count", min=1, max=50, help="With --create: how many."),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --create: do not ask first."),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Add a sync user to the pool: signed in and proven before it is kept.

    Each sync user owns one Graph presence subscription of up to 650 people, so a pool of N
    covers up to N × 650 people by notifications. A user under MFA (security defaults) signs in
    by device code or browser; no password is stored then.

    Examples:

    \b
      presencectl sync-user add --username sync2@contoso.onmicrosoft.com --device-code
      printf '%s\\n' "$PW" | presencectl sync-user add --username U --password-stdin
    """
    from presencectl.errors import UsageError
    from presencectl.identity.sync_user import add_sync_user

    app_ctx = app_context(ctx)
    kind = _sign_in_kind(password_stdin, device_code, browser)
    profile = app_ctx.load_profile()
    if create:
        if username or password_stdin:
            raise UsageError(
                "--create names the accounts and makes their passwords itself",
                hint="drop --username / --password-stdin; the admin signs in with --device-code "
                "(default) or --browser",
            )
        _create_members(app_ctx, profile, count, "browser" if browser else "device_code", yes)
        return
    if not username:
        raise UsageError("which user?", hint="pass --username U (or --create --count N)")
    password = _member_password(app_ctx, password_stdin) if kind == "password" else None
    status = add_sync_user(profile, username, kind, password=password, on_message=_device_message)
    app_ctx.render(_status_row(status, kind), title="Sync user added, signed in and proven")
    _note(app_ctx, "`presencectl sync-user list` shows the pool.")


def _create_members(app_ctx: AppContext, profile: Any, count: int, method: str, yes: bool) -> None:
    from presencectl.identity.sync_user_accounts import PERMISSION_NOTE, create_sync_users

    question = (
        f"Create {count} unlicensed account(s) 'presencectl sync N' in tenant "
        f"{profile.tenant_id} and add them to the pool? {PERMISSION_NOTE}"
    )
    if not yes and not app_ctx.confirm(question):
        raise typer.Abort()
    _note(app_ctx, PERMISSION_NOTE)

    def created(status: Any) -> None:
        _note(app_ctx, f"+ {status.username}: created, signed in and proven")

    made = create_sync_users(
        profile, count, method=method, on_message=_device_message, on_created=created
    )
    app_ctx.render(
        [_status_row(s, "password") for s in made],
        title=f"{len(made)} sync user(s) created and added",
    )


@sync_user_app.command("sign-in")
def sync_user_sign_in(
    ctx: typer.Context,
    username: str = typer.Option(..., "--username", help="A sync user of the pool."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="A new password, read from stdin."
    ),
    device_code: bool = typer.Option(False, "--device-code", help="Sign in by device code."),
    browser: bool = typer.Option(False, "--browser", help="Sign in in a browser."),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Sign a sync user of the pool in again (revoked sessions, a sign-in frequency policy, a new
    password), or move it to another way of signing in. It keeps its place in the pool.

    Examples:

    \b
      presencectl sync-user sign-in --username sync2@contoso.onmicrosoft.com --device-code
      printf '%s\\n' "$PW" | presencectl sync-user sign-in --username U --password-stdin
    """
    from presencectl.identity.sync_pool import find_member
    from presencectl.identity.sync_user import sign_in_sync_user

    app_ctx = app_context(ctx)
    profile = app_ctx.load_profile()
    member = find_member(profile, username)
    kind = (
        _sign_in_kind(password_stdin, device_code, browser)
        if (password_stdin or device_code or browser)
        else member.sign_in
    )
    password = _member_password(app_ctx, password_stdin) if kind == "password" else None
    status = sign_in_sync_user(
        profile, member.username, kind, password=password, on_message=_device_message
    )
    app_ctx.render(_status_row(status, kind), title="Sync user signed in and proven")


@sync_user_app.command("validate")
def sync_user_validate(
    ctx: typer.Context,
    username: str | None = typer.Option(
        None, "--username", help="Only this sync user (default: every one of the pool)."
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Sign in as each sync user and prove it can read presence.

    The stored credential itself is proven (a password sign-in, or the refresh token redeemed),
    never an access token from the cache. With one sync user (or --username) the answer is one
    object; with a pool, one row per member, and the exit code of the first failure.
    """
    from presencectl.identity.sync_pool import find_member, pool_members
    from presencectl.identity.sync_user import validate_sync_user

    app_ctx = app_context(ctx)
    profile = app_ctx.load_profile()
    members = pool_members(profile)
    if username is not None or len(members) <= 1:
        status = validate_sync_user(profile, username)
        app_ctx.render(status, title="Sync user signed in and read its own presence")
        return
    _validate_pool(app_ctx, profile, [m.username for m in members], find_member, validate_sync_user)


def _validate_pool(
    app_ctx: AppContext, profile: Any, names: list[str], find: Any, validate: Any
) -> None:
    from presencectl.errors import PresencectlError

    rows: list[dict[str, Any]] = []
    first_error: PresencectlError | None = None
    for name in names:
        kind = find(profile, name).sign_in
        try:
            status = validate(profile, name)
        except PresencectlError as exc:
            first_error = first_error or exc
            rows.append({"username": name, "sign_in": kind, "result": "failed",
                         "code": exc.code, "detail": exc.message, "hint": exc.hint})  # fmt: skip
            continue
        rows.append({"username": name, "sign_in": kind, "result": "ok", "code": "",
                     "detail": status.presence, "hint": ""})  # fmt: skip
    app_ctx.render(rows, title="Sync users signed in and read their own presence")
    if first_error is not None:
        raise typer.Exit(int(first_error.exit_code))


def _coverage(profile_name: str, members: list[Any]) -> dict[str, int] | None:
    """People each member's Graph presence subscription covers, from the state database's
    subscription rows (the sync records each one's owner); None when that is not known."""
    import json
    import sqlite3

    from presencectl.sync.state import database_path

    path = database_path(profile_name)
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT owner, detail FROM subscriptions WHERE side = 'graph'"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error:  # no owner column yet (a database from before the pool), locked, …
        return None
    first = members[0].username.lower() if members else ""
    covered: dict[str, int] = {}
    for owner, detail in rows:
        try:
            users = int((json.loads(detail) if detail else {}).get("users") or 0)
        except (ValueError, TypeError, AttributeError):
            continue
        key = str(owner or first).lower()
        covered[key] = covered.get(key, 0) + users
    return covered


@sync_user_app.command("list")
def sync_user_list(
    ctx: typer.Context,
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """List the sync users: how each signs in, when it was proven, whom it covers.

    "people covered" comes from the last watch's subscriptions ("-" when not known).
    """
    from presencectl.identity.sync_pool import pool_members

    app_ctx = app_context(ctx)
    profile = app_ctx.load_profile()
    members = pool_members(profile)
    covered = _coverage(profile.name, members)
    rows = [
        {
            "username": m.username,
            "sign_in": m.sign_in,
            "validated_at": m.validated_at,
            "people_covered": (covered.get(m.username.lower(), 0) if covered is not None else None),
        }
        for m in members
    ]
    if app_ctx.json:
        app_ctx.render(rows)
        return
    app_ctx.render(
        [
            {
                **r,
                "validated_at": r["validated_at"] or "-",
                "people_covered": "-" if r["people_covered"] is None else r["people_covered"],
            }
            for r in rows
        ],
        columns=["username", "sign_in", "validated_at", "people_covered"],
        title=f"Sync users of profile '{profile.name}' ({len(rows)})",
    )
    if not rows:
        _note(app_ctx, "No sync user: `presencectl sync-user add --username U --device-code`.")


@sync_user_app.command("remove")
def sync_user_remove(
    ctx: typer.Context,
    username: str = typer.Option(..., "--username", help="The sync user to take out."),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Remove the last one even while Teams → Connect is enabled."
    ),
    delete: bool = typer.Option(
        False,
        "--delete",
        help="Also delete the account in Entra ID (the admin signs in; for accounts made with "
        "--create).",
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Take a sync user out of the pool, with its password or refresh token.

    Its people move to the other sync users at the next watch. The last one is removed while
    Teams → Connect is enabled only with --yes (or a confirmation): that direction then reads
    Teams by polling only.

    Example: presencectl sync-user remove --username sync2@contoso.onmicrosoft.com
    """
    from presencectl.identity.sync_pool import find_member, pool_members
    from presencectl.identity.sync_user import remove_sync_user, teams_to_connect_enabled

    app_ctx = app_context(ctx)
    profile = app_ctx.load_profile()
    member = find_member(profile, username)
    last = len(pool_members(profile)) == 1
    if last and teams_to_connect_enabled(profile) and not yes:
        from presencectl.errors import UsageError

        question = (
            f"{member.username} is the last sync user and Teams → Connect is enabled: without "
            "it, Teams is read by polling only. Remove it?"
        )
        if not app_ctx.interactive:
            raise UsageError(
                f"{member.username} is the last sync user and Teams → Connect is enabled; "
                "nothing was removed",
                hint="add another first (`presencectl sync-user add`), or pass --yes to go "
                "polling-only",
            )
        if not app_ctx.confirm(question):
            raise typer.Abort()
    if delete:
        from presencectl.identity.sync_user_accounts import delete_sync_user_account

        if not yes and not app_ctx.confirm(
            f"Delete the account {member.username} in Entra ID as well (it goes to the deleted "
            "users for 30 days)?"
        ):
            raise typer.Abort()
        delete_sync_user_account(
            profile, member.username, method="device_code", on_message=_device_message
        )
    removed = remove_sync_user(profile, member.username)
    app_ctx.render(removed)
    if delete:
        _note(app_ctx, f"The account {member.username} is deleted in Entra ID.")
    if removed.teams_to_connect == "polling-only":
        _note(app_ctx, "Teams → Connect now reads Teams by polling only (no sync user left).")


@sync_user_app.command("forget")
def sync_user_forget(
    ctx: typer.Context,
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Remove the stored sync user credentials."""
    from presencectl.identity.sync_user import forget_sync_user

    app_ctx = app_context(ctx)
    removed = forget_sync_user(app_ctx.load_profile())
    app_ctx.render({"removed_" + k: v for k, v in removed.items()})


def register(app: typer.Typer) -> None:
    app.command("setup-azure")(setup_azure)
    app.command("consent")(consent)
    app.command("logout")(logout)
    app.add_typer(sync_user_app, name="sync-user")
