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
    help="Store, validate or forget the dedicated Azure sync user.", no_args_is_help=True
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
        _note(app_ctx, "Signed out: the admin's cached tokens of " + ", ".join(removed)
              + " are removed; setup-azure and consent will ask for a sign-in again.")
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
            _note(app_ctx, "No admin is signed in here and prompting is off: proving the app's "
                  "permissions by using them (--as-app).")
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
    from presencectl.identity.sync_user import store_sync_user

    app_ctx = app_context(ctx)
    profile = app_ctx.load_profile(must_exist=False)
    password, store = _read_password(app_ctx, password_stdin)
    status = store_sync_user(profile, username, password, store_password=store)
    stored_in = status.password_source if store else "not stored (read from the environment)"
    app_ctx.render({"username": status.username, "password_stored_in": stored_in})
    _note(app_ctx, "Next: `presencectl sync-user validate`.")


@sync_user_app.command("validate")
def sync_user_validate(
    ctx: typer.Context,
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Sign in as the sync user and prove it can read presence."""
    from presencectl.identity.sync_user import validate_sync_user

    app_ctx = app_context(ctx)
    status = validate_sync_user(app_ctx.load_profile())
    app_ctx.render(status, title="Sync user signed in and read its own presence")


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
