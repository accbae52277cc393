"""The admin's sign-in where organisations restrict it: device code blocked by Conditional Access,
--browser on a host that cannot open one, and a browser sign-in that never finishes."""

from __future__ import annotations

import re
import ssl
import threading
import webbrowser
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from presencectl.config import load_profile

ADMIN = "admin@contoso.example"
BLOCKED = "ca-admin@contoso.example"


@pytest.fixture
def sbx() -> Iterator[Any]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=ADMIN) as sb:
        sb.write_profile("sandbox")
        yield sb


def test_device_code_blocked_by_conditional_access(cli: Any) -> None:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=BLOCKED) as sb:
        sb.write_profile("sandbox")
        sb.control.post(
            "/_sandbox/users",
            json={
                "email": BLOCKED,
                "display_name": "CA admin",
                "on": ["teams", "connect"],
                "password": "Pw-ca-admin!9",
                "roles": ["Global Administrator"],
                "flags": ["device_code_blocked"],
            },
        ).raise_for_status()
        result = cli("--profile", "sandbox", "--no-input", "-o", "json", "setup-azure")
    assert result.exit_code == 4, result.stdout
    error = result.json()["error"]
    assert error["code"] == "mfa_or_policy_blocked"
    assert "AADSTS53003" in error["message"]
    assert "--browser" in error["hint"] and "Authentication flows" in error["hint"]


def test_the_sign_in_flow_alone_decides_the_class() -> None:
    from presencectl.identity.errors import classify

    body = {"error": "invalid_grant", "error_codes": [53003]}
    assert classify(body, who="a", flow="admin").code == "mfa_or_policy_blocked"
    assert classify(body, who="a", flow="password").code == "conditional_access_blocked"
    for code in (530032, 530035, 50131):
        blocked = {"error": "invalid_grant", "error_codes": [code]}
        assert classify(blocked, who="a", flow="admin").code == "mfa_or_policy_blocked"


# ------------------------------------------------------------------ --browser


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action") or ""
        if tag == "input" and a.get("type") == "hidden":
            self.fields[a.get("name") or ""] = a.get("value") or ""


class FakeBrowser:
    """Stands in for the user's browser: opens the sign-in page, submits the form it answers."""

    def __init__(self, sb: Any, *, completes: bool = True) -> None:
        self.sb = sb
        self.completes = completes
        self.opened: list[str] = []

    def open(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
        self.opened.append(url)
        if self.completes:
            threading.Thread(target=self._sign_in, args=(url,), daemon=True).start()
        return True

    def _sign_in(self, url: str) -> None:
        ctx = ssl.create_default_context(cafile=self.sb.ca_bundle)
        page = httpx.get(url, verify=ctx, timeout=10)
        form = _Form()
        form.feed(page.text)
        target = re.sub(r"^http://localhost", "http://127.0.0.1", form.action)
        httpx.post(target, data=form.fields, timeout=10)


@pytest.fixture
def display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":0")


def _use(monkeypatch: pytest.MonkeyPatch, browser: FakeBrowser | None) -> None:
    def get(using: str | None = None) -> FakeBrowser:
        if browser is None:
            raise webbrowser.Error("could not locate runnable browser")
        return browser

    monkeypatch.setattr(webbrowser, "get", get)
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: get().open(url))


def test_browser_sign_in_against_the_sandbox(
    sbx: Any, display: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.identity.tokens import admin_sign_in

    browser = FakeBrowser(sbx)
    _use(monkeypatch, browser)
    messages: list[Any] = []
    session = admin_sign_in(load_profile("sandbox"), "browser", on_message=messages.append)
    assert session.username == ADMIN
    assert messages == []  # no fallback, no device code
    assert len(browser.opened) == 1 and "/oauth2/v2.0/authorize?" in browser.opened[0]


@pytest.mark.parametrize("cause", ["no display", "no browser"])
def test_browser_falls_back_to_device_code(
    sbx: Any, cli: Any, monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    if cause == "no display":
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        monkeypatch.delenv("WSL_DISTRO_NAME", raising=False)
        monkeypatch.setattr("sys.platform", "linux")
        _use(monkeypatch, FakeBrowser(sbx, completes=False))
    else:
        monkeypatch.setenv("DISPLAY", ":0")
        _use(monkeypatch, None)
    result = cli("--profile", "sandbox", "--no-input", "setup-azure", "--browser")
    assert result.exit_code == 0, result.stderr
    fallback = [line for line in result.stderr.splitlines() if "Cannot open a browser" in line]
    assert len(fallback) == 1
    assert "signing in with a device code instead" in fallback[0]
    assert "enter the code" in result.stderr  # the device-code message followed


def test_an_unfinished_browser_sign_in_gives_up(
    sbx: Any, display: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.errors import ExitCode
    from presencectl.identity.errors import SignInTimeout
    from presencectl.identity.tokens import admin_sign_in

    browser = FakeBrowser(sbx, completes=False)  # the page opens; nobody signs in
    _use(monkeypatch, browser)
    with pytest.raises(SignInTimeout) as gave_up:
        admin_sign_in(load_profile("sandbox"), "browser", on_message=print, timeout=2)
    assert gave_up.value.code == "sign_in_timeout"
    assert gave_up.value.exit_code == ExitCode.AUTH
    assert browser.opened


def test_the_default_browser_wait_is_five_minutes() -> None:
    import inspect

    from presencectl.identity.setup import SetupOptions
    from presencectl.identity.tokens import admin_sign_in

    assert inspect.signature(admin_sign_in).parameters["timeout"].default == 300
    assert SetupOptions().sign_in_timeout == 300


# ------------------------------------------------------------------ stale cached sign-ins


def test_a_stale_cached_admin_sign_in_heals_itself_after_a_sandbox_restart(cli: Any) -> None:
    """Issue 24 item 1: the admin token cached for a previous sandbox (same seed, so the same
    tenant id) is refused by the new one; setup-azure drops it and signs in again, once."""
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=5, seed=1, auto_approve=ADMIN) as first:
        first.write_profile("sandbox")
        done = cli("--profile", "sandbox", "--no-input", "setup-azure")
        assert done.exit_code == 0, done.stderr
        tenant = first.world.tenant_id
    with running_sandbox(users=5, seed=1, auto_approve=ADMIN) as second:
        assert second.world.tenant_id == tenant  # the cached account matches this tenant
        second.write_profile("sandbox")
        again = cli("--profile", "sandbox", "--no-input", "-o", "json", "setup-azure")
        assert again.exit_code == 0, again.stderr
        assert "signing in again" in again.stderr
        assert again.json()["client_id"] == load_profile("sandbox").client_id
        # Exactly one new sign-in: one device code asked for.
        assert second.world.stats.requests["entra_devicecode"] == 1, second.world.stats.requests


class _RefusingMsalApp:
    """An msal app whose cached sign-in Entra refuses (AADSTS70000), counting what is asked."""

    def __init__(self) -> None:
        self.silent_calls = 0
        self.removed: list[Any] = []
        self.accounts = [{"username": ADMIN}]

    def acquire_token_silent_with_error(self, scopes: Any, account: Any, **kw: Any) -> Any:
        self.silent_calls += 1
        return {"error": "invalid_grant", "error_codes": [70000]}

    def get_accounts(self, **kw: Any) -> list[Any]:
        return list(self.accounts)

    def remove_account(self, account: Any) -> None:
        self.removed.append(account)
        self.accounts.remove(account)


class _Cache:
    saved = 0

    def save(self) -> None:
        self.saved += 1


def test_a_stale_sign_in_is_redone_once_then_the_hint_names_logout() -> None:
    from presencectl.errors import AuthError
    from presencectl.graph.tokens import AccessToken
    from presencectl.identity.tokens import AdminTokenProvider

    app = _RefusingMsalApp()
    again: list[int] = []

    def sign_in_again() -> dict[str, Any]:
        again.append(1)
        return {"error": "authorization_declined", "error_codes": [70000]}

    provider = AdminTokenProvider(
        app,
        _Cache(),  # type: ignore[arg-type]
        app.accounts[0],
        ["User.Read"],
        AccessToken("old", 0.0),
        "https://127.0.0.1:1/t",
        sign_in_again=sign_in_again,
    )
    for _ in range(2):
        with pytest.raises(AuthError) as caught:
            provider(True)
        assert "presencectl logout" in caught.value.hint
    assert again == [1]  # signed in again once, never in a loop
    assert app.removed == [{"username": ADMIN}]  # the refused cache entry dropped
