"""Entra ID sign-in failures as typed errors: AADSTS ``error_codes`` → AuthError subclasses.

Owns the classification of every token-endpoint answer the tool can get (sync user, app, admin):
one table, :data:`RULES`, of codes → (class, message, remedy).
It reads ``error_codes`` (and, for the device-code protocol, the RFC 8628 ``error`` value), never
the description text, which Microsoft words differently by locale and over time. Each class has a
stable ``code`` (a contract for scripts and docs/troubleshooting.md), a message and a hint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from presencectl.errors import ApiError, AuthError, ConfigError, NetworkError

log = logging.getLogger(__name__)

#: The seed's own words for a pending first-login password change (vendor article, step 6).
PASSWORD_CHANGE_MESSAGE = "Azure login error. Has first login password change been completed?"


class SignInError(AuthError):
    """A sign-in the identity platform refused (exit 4). ``aad_codes`` holds the AADSTS codes."""

    code = "sign_in_failed"

    def __init__(self, message: str, *, hint: str = "", aad_codes: tuple[int, ...] = ()) -> None:
        super().__init__(message, hint=hint)
        self.aad_codes = aad_codes


class PasswordChangeRequired(SignInError):
    code = "password_change_required"


class BadCredentials(SignInError):
    code = "bad_credentials"


class UserNotFound(SignInError):
    code = "user_not_found"


class AccountLocked(SignInError):
    code = "account_locked"


class AccountDisabled(SignInError):
    code = "account_disabled"


class MfaRequired(SignInError):
    code = "mfa_required"


class SyncUserReauthRequired(SignInError):
    """A device-code or browser sync user whose refresh token no longer works: the person must
    sign in again (revoked sessions, a sign-in frequency policy, expiry by inactivity)."""

    code = "sync_user_reauth_required"


class SyncUserMismatch(SignInError):
    """An interactive sync-user sign-in made with another account than the member's."""

    code = "sync_user_mismatch"


class ConditionalAccessBlocked(SignInError):
    code = "conditional_access_blocked"


class PolicyBlocked(SignInError):
    """The admin's device-code sign-in refused by Conditional Access or security defaults."""

    code = "mfa_or_policy_blocked"


class SignInTimeout(SignInError):
    code = "sign_in_timeout"


class ConsentRequired(SignInError):
    code = "consent_required"


class PublicClientDisabled(SignInError):
    code = "public_client_disabled"


class FederatedAccountUnsupported(SignInError):
    code = "federated_account_unsupported"


class ClientSecretInvalid(SignInError):
    code = "client_secret_invalid"


class AppNotFound(SignInError):
    code = "app_not_found"


class AppCredentialRefused(SignInError):
    """A certificate or federated client assertion Entra refused (identity/app_credentials.py)."""

    code = "app_credential_refused"


class TenantNotFound(SignInError):
    code = "tenant_not_found"


class DeviceCodeExpired(SignInError):
    code = "device_code_expired"


class SignInDeclined(SignInError):
    code = "sign_in_declined"


# Codes a Conditional Access or security-defaults block returns (entra-docs
# reference-error-codes): 53003 BlockedByConditionalAccess (what a policy on "Authentication
# flows: device code flow" answers), 530032 BlockedByConditionalAccessOnSecurityPolicy,
# 530035 BlockedBySecurityDefaults, 50131 ConditionalAccessFailed.
DEVICE_CODE_POLICY_CODES = frozenset({53003, 530032, 530035, 50131})


# A refresh token refused for one of these asks for a new interactive sign-in (entra-docs
# reference-error-codes): 50173 FreshTokenNeeded (grant revoked, e.g. sessions revoked or the
# password reset), 70043 / 70044 sign-in frequency (Conditional Access), 70008 ExpiredOrRevoked-
# Grant, 700082 refresh token expired by inactivity, 50133 session invalid after a password change,
# 50076 / 50079 / 50074 MFA asked again, 70000 InvalidGrant (the token itself unknown).
REAUTH_CODES = frozenset({50173, 70043, 70044, 70008, 700082, 50133, 50076, 50079, 50074, 70000})


@dataclass(frozen=True)
class Rule:
    """One row of :data:`RULES`: the AADSTS codes it answers (or RFC 8628 ``error`` values), the
    sign-in flows it is for (empty: every flow), the error class, its message and its remedy.

    Message and remedy are ``str.format`` templates over :func:`classify`'s context: ``who``,
    ``tenant``, ``tag`` (the AADSTS codes, in brackets), ``retry`` (the command to run again),
    ``store_again`` (the sync user's ``sync-user set``), ``what`` (the credentials of the flow),
    ``credentials_remedy``, ``secret_state`` (expired / not valid), ``error``."""

    codes: frozenset[int]
    cls: type[SignInError]
    message: str
    remedy: str
    flows: frozenset[str] = frozenset()
    errors: frozenset[str] = frozenset()

    def matches(self, codes: set[int], flow: str, error: str) -> bool:
        if self.flows and flow not in self.flows:
            return False
        return bool(self.codes & codes) or error in self.errors


def _rule(codes: set[int], cls: type[SignInError], message: str, remedy: str, *,
          flows: tuple[str, ...] = (), errors: tuple[str, ...] = ()) -> Rule:  # fmt: skip
    return Rule(frozenset(codes), cls, message, remedy, frozenset(flows), frozenset(errors))


CERTIFICATE_REMEDY = (
    "Run `presencectl setup-azure --credential certificate` to register a certificate "
    "again (or `--rotate-credential`); check that it is in the app's Certificates & "
    "secrets."
)
FEDERATED_REMEDY = (
    "Compare the app's Certificates & secrets > Federated credentials with the token "
    "(issuer, subject, audience api://AzureADTokenExchange), or run `presencectl "
    "setup-azure --credential federated --federated-issuer URL --federated-subject S`."
)

#: Token-endpoint answers → typed errors, first match wins (so the order is part of the table:
#: the admin's device-code policy block comes before the general Conditional Access one).
#: Codes: entra-docs reference-error-codes; the device-code ``error`` values: RFC 8628.
RULES: tuple[Rule, ...] = (
    _rule(
        {50055, 50144, 50125},
        PasswordChangeRequired,
        PASSWORD_CHANGE_MESSAGE,
        "Sign in once as {who} (https://myaccount.microsoft.com), change the password when "
        "asked, store the new one with {store_again}, then run {retry}{tag}.",
    ),
    _rule(
        {50126},
        BadCredentials,
        "Azure login error: wrong {what} for {who}{tag}.",
        "{credentials_remedy}",
    ),
    _rule(
        {50034},
        UserNotFound,
        "Azure login error: no user {who} in tenant {tenant}{tag}.",
        "Use the user principal name exactly as Entra ID shows it (often "
        "name@yourtenant.onmicrosoft.com) and check the profile's tenant_id.",
    ),
    _rule(
        {50053},
        AccountLocked,
        "Azure login error: the account {who} is locked{tag}.",
        "Too many failed sign-ins locked it (Smart Lockout); wait for the lockout to end or "
        "have an admin reset the password, then store it again with {store_again}.",
    ),
    _rule(
        {50057},
        AccountDisabled,
        "Azure login error: the account {who} is disabled{tag}.",
        "Enable it in the Entra admin center (Users > the user > Properties > "
        "Account enabled = Yes).",
    ),
    _rule(
        {50076, 50079, 50074},
        MfaRequired,
        "Azure login error: {who} must use multi-factor authentication, which a password "
        "sign-in cannot do{tag}.",
        "Sign {who} in by device code instead (MFA once, no password kept): `presencectl "
        "sync-user sign-in --username {who} --device-code`. Or exclude it from the "
        "Conditional Access policy that requires MFA (Entra ID P1). Security defaults "
        "cannot exclude an account. See docs/azure-setup.md.",
        flows=("password",),
    ),
    _rule(
        {50076, 50079, 50074},
        MfaRequired,
        "Azure login error: {who} must use multi-factor authentication, which a password "
        "sign-in cannot do{tag}.",
        "Complete the MFA prompt in an interactive sign-in (`--device-code` or "
        "`--browser`). See docs/azure-setup.md.",
    ),
    _rule(
        set(DEVICE_CODE_POLICY_CODES),
        PolicyBlocked,
        "Azure login error: your organisation's sign-in policy refused the device-code "
        "sign-in of {who}{tag}.",
        "Sign in with a browser instead (`--browser`, on a machine with a browser), or ask "
        "a Conditional Access administrator to exclude this account from the policy that "
        "blocks device code flow (Entra admin center > Protection > Conditional Access > "
        "the policy > Conditions > Authentication flows); the sign-in log names the policy.",
        flows=("admin",),
    ),
    _rule(
        {53003},
        ConditionalAccessBlocked,
        "Azure login error: a Conditional Access policy blocked the sign-in of {who}{tag}.",
        "Find the policy in Entra ID > Sign-in logs (Conditional Access tab) and exclude the "
        "sync user from it, or allow the location this tool runs from.",
    ),
    _rule(
        {65001},
        ConsentRequired,
        "Azure login error: the app has no admin consent for the permissions {who} needs{tag}.",
        "Run `presencectl consent` as the Azure admin (Global Administrator).",
    ),
    _rule(
        {7000218},
        PublicClientDisabled,
        "Azure login error: the app registration does not allow public client flows, which "
        "the sync user's password sign-in needs{tag}.",
        "In the Entra admin center open App registrations > the presencectl app > "
        "Authentication > Advanced settings and set 'Allow public client flows' to Yes "
        "(or run `presencectl setup-azure` again, which sets it).",
    ),
    _rule(
        {7000215, 7000222},
        ClientSecretInvalid,
        "Azure login error: the app's client secret is {secret_state}{tag}.",
        "Run `presencectl setup-azure` again to add a new secret, or pass it in "
        "PRESENCECTL_CLIENT_SECRET.",
    ),
    _rule(
        {700024},
        AppCredentialRefused,
        "Azure login error: the app's certificate was refused (the assertion is outside its "
        "valid time: check this clock){tag}.",
        CERTIFICATE_REMEDY,
    ),
    _rule(
        {700027},
        AppCredentialRefused,
        "Azure login error: the app's certificate was refused{tag}.",
        CERTIFICATE_REMEDY,
    ),
    # The first of issuer, subject, audience that the codes name; 70021 alone: the record.
    _rule(
        {700211},
        AppCredentialRefused,
        "Azure login error: no federated credential of the app matches the token's issuer{tag}.",
        FEDERATED_REMEDY,
    ),
    _rule(
        {700213},
        AppCredentialRefused,
        "Azure login error: no federated credential of the app matches the token's subject{tag}.",
        FEDERATED_REMEDY,
    ),
    _rule(
        {700212},
        AppCredentialRefused,
        "Azure login error: no federated credential of the app matches the token's audience{tag}.",
        FEDERATED_REMEDY,
    ),
    _rule(
        {70021},
        AppCredentialRefused,
        "Azure login error: no federated credential of the app matches the token's record{tag}.",
        FEDERATED_REMEDY,
    ),
    _rule(
        {700016, 700038},
        AppNotFound,
        "Azure login error: the app {who} does not exist in tenant {tenant}{tag}.",
        "Run `presencectl setup-azure` to create it, or fix client_id / tenant_id in the profile.",
    ),
    _rule(
        {90002, 900023, 90013},
        TenantNotFound,
        "Azure login error: tenant {tenant} was not found{tag}.",
        "Pass the tenant id (a GUID) or its verified domain with --tenant.",
    ),
    _rule(
        {70019, 70020},
        DeviceCodeExpired,
        "Azure login error: the device code expired before the sign-in was completed{tag}.",
        "Run {retry} again and finish the sign-in within the time shown.",
        errors=("expired_token",),
    ),
    _rule(
        {70000},
        SignInDeclined,
        "Azure login error: the sign-in was declined{tag}.",
        "Run {retry} again and accept the request.",
        errors=("authorization_declined", "access_denied"),
    ),
)

#: What no rule answers.
UNCLASSIFIED = _rule(
    set(),
    SignInError,
    "Azure login error for {who}: {error}{tag}.",
    "Look the code up at https://login.microsoftonline.com/error?code=<number> and run with "
    "-vv for details.",
)


def _codes(result: Mapping[str, Any]) -> tuple[int, ...]:
    raw = result.get("error_codes") or ()
    out: list[int] = []
    for value in raw if isinstance(raw, (list, tuple)) else (raw,):
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            continue
    return tuple(out)


def _aadsts(codes: tuple[int, ...]) -> str:
    return ", ".join(f"AADSTS{c}" for c in codes)


def classify(
    result: Mapping[str, Any],
    *,
    who: str,
    tenant: str = "",
    flow: str = "password",
) -> SignInError:
    """The typed error for an msal error ``result`` (a dict with ``error``/``error_codes``): the
    first row of :data:`RULES` that answers its codes (or its RFC 8628 ``error``) in ``flow``.

    ``who`` names the account or app the sign-in was for; ``flow`` is ``password`` (sync user),
    ``client`` (the app's client credentials) or ``admin`` (device code / browser).
    """
    codes = _codes(result)
    code_set = set(codes)
    error = str(result.get("error") or "")
    rule = next((r for r in RULES if r.matches(code_set, flow, error)), None)
    if rule is None:
        log.debug("unclassified sign-in error %s codes=%s", error, codes)
        rule = UNCLASSIFIED
    # `sign-in` proves the new password before it keeps it, and keeps a pool as it is (`set`
    # would make the pool this one user again).
    store_again = f"`presencectl sync-user sign-in --username {who} --password-stdin`"
    context = {
        "who": who,
        "tenant": tenant or "(profile tenant)",
        "tag": f" ({_aadsts(codes)})" if codes else "",
        "retry": {"password": "`presencectl sync-user validate`",
                  "client": "`presencectl consent --check`"}.get(flow, "`presencectl setup-azure`"),
        "store_again": store_again,
        "what": "client id or secret" if flow == "client" else "username or password",
        "credentials_remedy": f"Check the password and store it again with {store_again}."
        if flow == "password" else "Check the credentials and sign in again.",
        "secret_state": "expired" if 7000222 in code_set else "not valid",
        "error": error or "unknown error",
    }  # fmt: skip
    return rule.cls(
        rule.message.format(**context), hint=rule.remedy.format(**context), aad_codes=codes
    )


def needs_reauth(error: SignInError) -> bool:
    """True when a refused refresh token means the person must sign in again."""
    return bool(set(error.aad_codes) & REAUTH_CODES) or type(error) is SignInError


def reauth_required(
    who: str, sign_in: str, *, codes: tuple[int, ...] = (), never: bool = False
) -> SyncUserReauthRequired:
    """The error of a device-code or browser sync user that must sign in again."""
    flag = "--browser" if sign_in == "browser" else "--device-code"
    clean = tuple(int(c) for c in codes if str(c).isdigit())
    tag = f" ({_aadsts(clean)})" if clean else ""
    why = (
        "has no stored sign-in on this machine"
        if never
        else f"must sign in again: its refresh token was refused{tag}"
    )
    return SyncUserReauthRequired(
        f"the sync user {who} {why}",
        hint=f"run `presencectl sync-user sign-in --username {who} {flag}` and sign in as {who} "
        "(revoked sessions, a sign-in frequency policy or long inactivity end a refresh token)",
        aad_codes=clean,
    )


def federated_error(who: str) -> FederatedAccountUnsupported:
    return FederatedAccountUnsupported(
        f"Azure login error: {who} is a federated (AD FS) account; password sign-in works only "
        "for cloud-managed accounts.",
        hint="Create the sync user as a cloud-only account (name@yourtenant.onmicrosoft.com) "
        "and store it with `presencectl sync-user set`.",
    )


def network_error(exc: BaseException, where: str) -> NetworkError:
    text = str(exc) or type(exc).__name__
    hint = "Check the network and the profile's proxy setting."
    if "CERTIFICATE" in text.upper() or "SSL" in text.upper():
        hint = (
            "TLS verification failed: set the profile's ca_bundle to your proxy's (or the "
            "sandbox's) CA."
        )
    return NetworkError(f"cannot reach the Microsoft sign-in service ({where}): {text}", hint=hint)


def authority_error(exc: BaseException, authority: str) -> ConfigError:
    return ConfigError(
        f"the sign-in authority {authority} did not answer as Entra ID does: {exc}",
        hint="Check tenant_id (--tenant) and authority_url in the profile.",
        code="authority_invalid",
    )


def service_error(exc: BaseException, where: str) -> ApiError:
    return ApiError(
        f"the Microsoft sign-in service ({where}) failed: {exc}",
        hint="a temporary fault on the service side; try again in a minute",
        code="sign_in_service_error",
    )
