"""AADSTS error_codes → typed sign-in errors (unit level, msal error dicts as msal returns them)."""

from __future__ import annotations

import pytest

from presencectl.errors import AuthError, ExitCode
from presencectl.identity.errors import (
    PASSWORD_CHANGE_MESSAGE,
    SignInError,
    classify,
    federated_error,
    network_error,
)


def msal_error(code: int, error: str = "invalid_grant", description: str = "") -> dict[str, object]:
    """The shape msal hands back: the token endpoint's JSON body."""
    return {
        "error": error,
        "error_description": description or f"AADSTS{code}: some words that must not matter.",
        "error_codes": [code],
        "timestamp": "2025-01-01 00:00:00Z",
        "trace_id": "t",
        "correlation_id": "c",
    }


CASES = [
    (50055, "password_change_required"),
    (50144, "password_change_required"),
    (50125, "password_change_required"),
    (50126, "bad_credentials"),
    (50034, "user_not_found"),
    (50053, "account_locked"),
    (50057, "account_disabled"),
    (50076, "mfa_required"),
    (50079, "mfa_required"),
    (53003, "conditional_access_blocked"),
    (65001, "consent_required"),
    (7000218, "public_client_disabled"),
    (7000215, "client_secret_invalid"),
    (700016, "app_not_found"),
    (90002, "tenant_not_found"),
]


@pytest.mark.parametrize(("aadsts", "code"), CASES)
def test_each_code_maps_to_its_stable_error(aadsts: int, code: str) -> None:
    err = classify(msal_error(aadsts), who="sync@contoso.example", tenant="contoso.example")
    assert isinstance(err, SignInError) and isinstance(err, AuthError)
    assert err.code == code
    assert err.exit_code == ExitCode.AUTH
    assert err.hint
    assert err.aad_codes == (aadsts,)


def test_password_change_has_the_seeds_exact_message() -> None:
    err = classify(
        {
            "error": "invalid_grant",
            "suberror": "user_password_expired",
            "error_codes": [50055],
        },
        who="presence-sync@contoso.example",
    )
    assert err.message == "Azure login error. Has first login password change been completed?"
    assert err.message == PASSWORD_CHANGE_MESSAGE
    assert "presence-sync@contoso.example" in err.hint and "change the password" in err.hint


def test_classification_ignores_description_text() -> None:
    # A description that *talks* about a locked account must not override the code.
    err = classify(msal_error(50126, description="AADSTS50053: account is locked"), who="u@x")
    assert err.code == "bad_credentials"
    # …and a known description with no codes stays unclassified.
    assert classify(
        {"error": "invalid_grant", "error_description": "AADSTS50055"}, who="u"
    ).code == ("sign_in_failed")


def test_codes_as_strings_and_several_codes() -> None:
    err = classify({"error": "invalid_grant", "error_codes": ["50126", "50055"]}, who="u")
    assert err.code == "password_change_required"


def test_mfa_hint_names_conditional_access_exclusion() -> None:
    err = classify(msal_error(50076), who="u")
    assert "Conditional Access" in err.hint and "exclu" in err.hint.lower()


def test_consent_hint_names_the_command() -> None:
    assert "presencectl consent" in classify(msal_error(65001), who="u").hint


def test_public_client_hint_says_what_to_switch_on() -> None:
    assert "Allow public client flows" in classify(msal_error(7000218), who="u").hint


def test_unknown_code_is_generic_auth_error_naming_the_code() -> None:
    err = classify(msal_error(99999, error="weird"), who="u@x")
    assert err.code == "sign_in_failed" and "AADSTS99999" in err.message and err.exit_code == 4


def test_device_flow_protocol_errors() -> None:
    assert (
        classify({"error": "expired_token"}, who="admin", flow="admin").code
        == "device_code_expired"
    )
    assert (
        classify({"error": "authorization_declined"}, who="admin", flow="admin").code
        == "sign_in_declined"
    )


def test_federated_and_network() -> None:
    fed = federated_error("u@fed.example")
    assert fed.code == "federated_account_unsupported" and fed.exit_code == 4
    net = network_error(OSError("connection refused"), "https://login.example")
    assert net.code == "network_error" and net.exit_code == ExitCode.ERROR
    tls = network_error(OSError("[SSL: CERTIFICATE_VERIFY_FAILED]"), "x")
    assert "ca_bundle" in tls.hint


def test_error_renders_as_json_envelope() -> None:
    err = classify(msal_error(50055), who="u")
    assert err.to_dict() == {
        "code": "password_change_required",
        "message": PASSWORD_CHANGE_MESSAGE,
        "hint": err.hint,
    }


def test_every_row_of_the_table_is_reachable() -> None:
    """First match wins, so a row whose codes all belong to earlier rows (in every flow it is
    for) would never answer: each row must be the first to answer some code in some flow."""
    from presencectl.identity.errors import RULES

    flows = ("password", "client", "admin")
    for index, rule in enumerate(RULES):
        earlier = RULES[:index]
        reachable = any(
            not any(r.matches({code}, flow, "") for r in earlier)
            for flow in (rule.flows or flows)
            for code in rule.codes
        ) or any(
            not any(r.matches(set(), flow, error) for r in earlier)
            for flow in (rule.flows or flows)
            for error in rule.errors
        )
        assert reachable, rule.cls.__name__
