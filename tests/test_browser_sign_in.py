"""The admin's browser sign-in: msal's own interactive flow (auth code + PKCE, its loopback
redirect listener) against the sandbox's ``/oauth2/v2.0/authorize``, with a fake browser that
follows the authorize URL the way a real one would after the user signs in: the sandbox answers
302 to msal's ``http://localhost:PORT`` listener with the code, which the browser then loads."""

from __future__ import annotations

import html
import re
import ssl
import threading
import webbrowser
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

ADMIN = "admin@contoso.example"


class FakeBrowser:
    """Stands in for ``webbrowser.open``: follows the sign-in through the sandbox in a thread."""

    def __init__(self, ca_bundle: str, *, as_user: str | None = None) -> None:
        self.ca_bundle = ca_bundle
        self.as_user = as_user
        self.opened: list[str] = []
        self.redirects: list[str] = []
        self.pages: list[str] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def open(self, url: str, *args: Any, **kwargs: Any) -> bool:
        self.opened.append(url)
        thread = threading.Thread(target=self._follow, args=(url,), daemon=True)
        self._threads.append(thread)
        thread.start()
        return True

    def _follow(self, url: str) -> None:
        try:
            if self.as_user:  # the sandbox signs in the user a real browser would pick
                url += ("&" if "?" in url else "?") + f"sandbox_user={self.as_user}"
            verify = ssl.create_default_context(cafile=self.ca_bundle)
            with httpx.Client(verify=verify, follow_redirects=False, timeout=30) as browser:
                answer = browser.get(url)
                if answer.status_code in (302, 303):  # response_mode=query
                    location = answer.headers["location"]
                    self.redirects.append((location, {}))
                    page = browser.get(location)  # msal's loopback listener
                else:  # response_mode=form_post: the page's form submits itself
                    assert answer.status_code == 200, answer.text
                    action = html.unescape(re.search(r'action="([^"]*)"', answer.text)[1])
                    fields = {
                        html.unescape(k): html.unescape(v)
                        for k, v in re.findall(
                            r'<input type="hidden" name="([^"]*)" value="([^"]*)"', answer.text
                        )
                    }
                    self.redirects.append((action, fields))
                    page = browser.post(action, data=fields)  # msal's loopback listener
                self.pages.append(page.text)
        except BaseException as exc:  # the test reads these; a thread cannot raise into it
            self.errors.append(exc)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.fixture
def sandbox_admin(cli: Any) -> Iterator[Any]:
    from presencectl.sandbox import running_sandbox

    with running_sandbox(users=3) as sb:
        sb.write_profile("sandbox")
        yield sb


def _install(monkeypatch: pytest.MonkeyPatch, browser: FakeBrowser) -> None:
    """This host has a display and a browser (else presencectl falls back to a device code)."""
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(webbrowser, "get", lambda using=None: browser)
    monkeypatch.setattr(webbrowser, "open", browser.open)


def test_admin_signs_in_through_the_browser_flow(
    sandbox_admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.config import load_profile
    from presencectl.identity.tokens import admin_sign_in

    browser = FakeBrowser(sandbox_admin.ca_bundle)
    _install(monkeypatch, browser)
    profile = load_profile("sandbox")
    session = admin_sign_in(profile, "browser", on_message=lambda prompt: None)
    browser.join()
    assert browser.errors == []

    [opened] = browser.opened
    parts = urlsplit(opened)
    query = parse_qs(parts.query)
    assert parts.path == f"/{sandbox_admin.world.tenant_id}/oauth2/v2.0/authorize"
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["prompt"] == ["select_account"]
    redirect = urlsplit(query["redirect_uri"][0])
    assert redirect.scheme == "http" and redirect.hostname == "localhost"
    assert query["response_mode"] == ["form_post"]  # msal asks for it; the sandbox honours it
    [(action, fields)] = browser.redirects
    assert action == query["redirect_uri"][0]
    assert fields["code"] and [fields["state"]] == query["state"]

    assert session.username == ADMIN
    assert session.tenant_id == sandbox_admin.world.tenant_id
    token = session.provider()
    assert token.token  # a usable Graph token came out of the code exchange
    with httpx.Client(
        base_url=profile.graph_url, verify=ssl.create_default_context(cafile=profile.ca_bundle)
    ) as graph:
        me = graph.get("/me", headers={"Authorization": f"Bearer {token.token}"})
    assert me.status_code == 200 and me.json()["userPrincipalName"].lower() == ADMIN


def test_the_second_sign_in_comes_from_the_cache_without_a_browser(
    sandbox_admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.config import load_profile
    from presencectl.identity.tokens import admin_sign_in

    browser = FakeBrowser(sandbox_admin.ca_bundle)
    _install(monkeypatch, browser)
    profile = load_profile("sandbox")
    admin_sign_in(profile, "browser", on_message=lambda prompt: None)
    browser.join()
    again = admin_sign_in(profile, "browser", on_message=lambda prompt: None)
    assert len(browser.opened) == 1  # silent: msal's cache, persisted per profile
    assert again.username == ADMIN


def test_a_disabled_account_in_the_browser_is_a_sign_in_error(
    sandbox_admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.config import load_profile
    from presencectl.errors import PresencectlError
    from presencectl.identity.tokens import admin_sign_in

    sandbox_admin.control.post(
        "/_sandbox/users",
        json={"email": "gone@contoso.example", "display_name": "Gone", "on": ["teams"],
              "password": "x-Passw0rd!", "flags": ["disabled"]},
    ).raise_for_status()  # fmt: skip
    browser = FakeBrowser(sandbox_admin.ca_bundle, as_user="gone@contoso.example")
    _install(monkeypatch, browser)
    with pytest.raises(PresencectlError) as caught:
        admin_sign_in(load_profile("sandbox"), "browser", on_message=lambda prompt: None)
    browser.join()
    assert caught.value.exit_code == 4
    # The authorize endpoint answers `error=access_denied` with the AADSTS code only inside
    # error_description (no error_codes there): msal and presencectl report a declined sign-in.
    assert caught.value.code == "sign_in_declined"
    [(_, fields)] = browser.redirects
    assert fields["error"] == "access_denied" and "AADSTS50057" in fields["error_description"]


def test_setup_azure_with_browser_registers_the_app(
    sandbox_admin: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = FakeBrowser(sandbox_admin.ca_bundle)
    _install(monkeypatch, browser)
    result = cli("--profile", "sandbox", "-o", "json", "setup-azure", "--browser")
    browser.join()
    assert result.exit_code == 0, result.stderr
    assert len(browser.opened) == 1 and browser.errors == []
    from presencectl.config import load_profile

    assert load_profile("sandbox").client_id
