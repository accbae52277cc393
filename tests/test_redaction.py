"""Secrets redacted everywhere a log or an error reaches (issue 26): clientState, keys, URL
credentials, PEM keys; tracebacks of ``log.exception`` and ``-vv``; uvicorn's own loggers; the
proxy password in ``config show`` and in a validation error."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import httpx
import pytest

from presencectl import config
from presencectl.output import setup_logging
from presencectl.transport import redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('{"clientState": "CANARY-STATE-1", "changeType": "updated"}', "CANARY-STATE-1"),
        ("clientState=CANARY-STATE-2&x=1", "CANARY-STATE-2"),
        ("{'client_state': 'CANARY-STATE-3'}", "CANARY-STATE-3"),
        ('{"dataKey": "CANARYDATAKEY", "data": "x"}', "CANARYDATAKEY"),
        ('{"key_pem": "CANARYKEYPEM"}', "CANARYKEYPEM"),
        ("http://bob:CANARYPROXYPW@proxy.example:3128", "CANARYPROXYPW"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nCANARYPEMBODY\n-----END RSA PRIVATE KEY-----",
            "CANARYPEMBODY",
        ),
    ],
)
def test_redact_covers_client_state_keys_and_url_credentials(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "***" in redact(text)


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact("http://proxy.example:3128/x") == "http://proxy.example:3128/x"
    assert redact('{"changeType": "updated", "resource": "x"}') == (
        '{"changeType": "updated", "resource": "x"}'
    )
    assert "bob" in redact("http://bob:pw@proxy:1")  # the user stays, to tell proxies apart


def test_log_exception_traceback_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(2)
    try:
        try:
            raise RuntimeError("POST /token client_secret=CANARY-TB-SECRET&x=1")
        except RuntimeError:
            log = logging.getLogger("presencectl.test")
            log.exception("it failed: %s", "clientState=CANARY-ARG")
        try:
            raise ValueError('{"clientState": "CANARY-TB-STATE"}')
        except ValueError:
            logging.getLogger("some.library").error("boom", exc_info=True)
    finally:
        setup_logging(0)
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError" in err  # the traceback is there …
    for secret in ("CANARY-TB-SECRET", "CANARY-ARG", "CANARY-TB-STATE"):
        assert secret not in err, err  # … without the secrets


def test_vv_traceback_of_an_unexpected_error_is_redacted(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError('sent {"clientState": "CANARY-VV-STATE", "key": "CANARY-VV-KEY"}')

    monkeypatch.setattr(config, "config_path", boom)
    result = cli("config", "path", "-vv")
    assert result.exit_code == 1 and "Traceback" in result.stderr
    assert "CANARY-VV" not in result.stdout + result.stderr


def test_uvicorn_logs_pass_our_filter_and_leave_stdout_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from presencectl.sandbox import running_sandbox

    setup_logging(2)  # what `sandbox serve -vv` sets up
    try:
        with running_sandbox(users=2, log_level="debug") as sb:
            httpx.get(
                f"{sb.base_url}/_sandbox/health",
                params={"access_token": "CANARY-UV-TOKEN", "client_secret": "CANARY-UV-SECRET"},
                verify=ssl.create_default_context(cafile=sb.ca_bundle),
            )
    finally:
        setup_logging(0)
    captured = capsys.readouterr()
    assert "/_sandbox/health" in captured.err  # the access log is shown at -vv …
    assert "access_token=***" in captured.err  # … through our redactor
    assert "CANARY-UV" not in captured.out + captured.err
    assert "_sandbox/health" not in captured.out  # stdout is for data


def test_config_show_and_a_validation_error_hide_the_proxy_password(cli: Any) -> None:
    assert cli("config", "set", "--create", "tenant_id", "contoso.onmicrosoft.com").exit_code == 0
    proxy = "http://bob:CANARY-PROXY-PW@proxy.example:3128"
    for args in (
        ("config", "set", "proxy", proxy),
        ("config", "set", "proxy", proxy + "/"),
        ("-o", "json", "config", "unset", "proxy"),
        ("config", "set", "proxy", proxy),
    ):
        changed = cli(*args)  # value and previous shown without the password
        assert changed.exit_code == 0 and "CANARY-PROXY-PW" not in changed.stdout + changed.stderr
        assert "bob:***@proxy.example" in changed.stdout
    shown = cli("config", "show", "-o", "json")
    assert shown.exit_code == 0, shown.stderr
    assert "CANARY-PROXY-PW" not in shown.stdout + shown.stderr
    assert shown.json()["settings"]["proxy"] == "http://bob:***@proxy.example:3128"
    path = config.config_path()
    path.write_text(path.read_text().replace("http://bob", "ftp://bob"))
    bad = cli("config", "show", "-o", "json")
    assert bad.exit_code != 0 and "proxy" in bad.stdout
    assert "CANARY-PROXY-PW" not in bad.stdout + bad.stderr
