"""Entra ID sign-in failures as typed errors: AADSTS ``error_codes`` → AuthError subclasses.

Owns the classification of every token-endpoint answer the tool can get (sync user, app, admin).
It reads ``error_codes`` (and, for the device-code protocol, the RFC 8628 ``error`` value), never
the description text, which Microsoft words differently by locale and over time. Each class has a
stable ``code`` (a contract for scripts and docs/troubleshooting.md), a message and a hint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
    """The typed error for an msal error ``result`` (a dict with ``error``/``error_codes``).

    ``who`` names the account or app the sign-in was for; ``flow`` is ``password`` (sync user),
    ``client`` (the app's client credentials) or ``admin`` (device code / browser).
    """
    codes = _codes(result)
    code_set = set(codes)
    tag = f" ({_aadsts(codes)})" if codes else ""
    retry = (
        "`presencectl sync-user validate`"
        if flow == "password"
        else "`presencectl consent --check`"
        if flow == "client"
        else "`presencectl setup-azure`"
    )
    # `sign-in` proves the new password before it keeps it, and keeps a pool as it is (`set`
    # would make the pool this one user again).
    store_again = f"`presencectl sync-user sign-in --username {who} --password-stdin`"

    def make(cls: type[SignInError], message: str, hint: str) -> SignInError:
        return cls(message, hint=hint, aad_codes=codes)

    if code_set & {50055, 50144, 50125}:
        return make(
            PasswordChangeRequired,
            PASSWORD_CHANGE_MESSAGE,
            f"Sign in once as {who} (https://myaccount.microsoft.com), change the password when "
            f"asked, store the new one with {store_again}, then run {retry}{tag}.",
        )
    if 50126 in code_set:
        what = "client id or secret" if flow == "client" else "username or password"
        return make(
            BadCredentials,
            f"Azure login error: wrong {what} for {who}{tag}.",
            f"Check the password and store it again with {store_again}."
            if flow == "password"
            else "Check the credentials and sign in again.",
        )
    if 50034 in code_set:
        return make(
            UserNotFound,
            f"Azure login error: no user {who} in tenant {tenant or '(profile tenant)'}{tag}.",
            "Use the user principal name exactly as Entra ID shows it (often "
            "name@yourtenant.onmicrosoft.com) and check the profile's tenant_id.",
        )
    if 50053 in code_set:
        return make(
            AccountLocked,
            f"Azure login error: the account {who} is locked{tag}.",
            "Too many failed sign-ins locked it (Smart Lockout); wait for the lockout to end or "
            "have an admin reset the password, then store it again with " + store_again + ".",
        )
    if 50057 in code_set:
        return make(
            AccountDisabled,
            f"Azure login error: the account {who} is disabled{tag}.",
            "Enable it in the Entra admin center (Users > the user > Properties > "
            "Account enabled = Yes).",
        )
    if code_set & {50076, 50079, 50074}:
        return make(
            MfaRequired,
            f"Azure login error: {who} must use multi-factor authentication, which a password "
            f"sign-in cannot do{tag}.",
            f"Sign {who} in by device code instead (MFA once, no password kept): `presencectl "
            f"sync-user sign-in --username {who} --device-code`. Or exclude it from the "
            "Conditional Access policy that requires MFA (Entra ID P1). Security defaults "
            "cannot exclude an account. See docs/azure-setup.md."
            if flow == "password"
            else "Complete the MFA prompt in an interactive sign-in (`--device-code` or "
            "`--browser`). See docs/azure-setup.md.",
        )
    if flow == "admin" and code_set & DEVICE_CODE_POLICY_CODES:
        return make(
            PolicyBlocked,
            f"Azure login error: your organisation's sign-in policy refused the device-code "
            f"sign-in of {who}{tag}.",
            "Sign in with a browser instead (`--browser`, on a machine with a browser), or ask "
            "a Conditional Access administrator to exclude this account from the policy that "
            "blocks device code flow (Entra admin center > Protection > Conditional Access > "
            "the policy > Conditions > Authentication flows); the sign-in log names the policy.",
        )
    if 53003 in code_set:
        return make(
            ConditionalAccessBlocked,
            f"Azure login error: a Conditional Access policy blocked the sign-in of {who}{tag}.",
            "Find the policy in Entra ID > Sign-in logs (Conditional Access tab) and exclude the "
            "sync user from it, or allow the location this tool runs from.",
        )
    if 65001 in code_set:
        return make(
            ConsentRequired,
            f"Azure login error: the app has no admin consent for the permissions {who} "
            f"needs{tag}.",
            "Run `presencectl consent` as the Azure admin (Global Administrator).",
        )
    if 7000218 in code_set:
        return make(
            PublicClientDisabled,
            f"Azure login error: the app registration does not allow public client flows, which "
            f"the sync user's password sign-in needs{tag}.",
            "In the Entra admin center open App registrations > the presencectl app > "
            "Authentication > Advanced settings and set 'Allow public client flows' to Yes "
            "(or run `presencectl setup-azure` again, which sets it).",
        )
    if code_set & {7000215, 7000222}:
        expired = 7000222 in code_set
        return make(
            ClientSecretInvalid,
            f"Azure login error: the app's client secret is "
            f"{'expired' if expired else 'not valid'}{tag}.",
            "Run `presencectl setup-azure` again to add a new secret, or pass it in "
            "PRESENCECTL_CLIENT_SECRET.",
        )
    if code_set & {700027, 700024}:
        clock = " (the assertion is outside its valid time: check this clock)"
        return make(
            AppCredentialRefused,
            f"Azure login error: the app's certificate was refused"
            f"{clock if 700024 in code_set else ''}{tag}.",
            "Run `presencectl setup-azure --credential certificate` to register a certificate "
            "again (or `--rotate-credential`); check that it is in the app's Certificates & "
            "secrets.",
        )
    if code_set & {700211, 700212, 700213, 70021}:
        part = {700211: "issuer", 700212: "audience", 700213: "subject"}
        which = next((part[c] for c in (700211, 700213, 700212) if c in code_set), "record")
        return make(
            AppCredentialRefused,
            f"Azure login error: no federated credential of the app matches the token's "
            f"{which}{tag}.",
            "Compare the app's Certificates & secrets > Federated credentials with the token "
            "(issuer, subject, audience api://AzureADTokenExchange), or run `presencectl "
            "setup-azure --credential federated --federated-issuer URL --federated-subject S`.",
        )
    if code_set & {700016, 700038}:
        return make(
            AppNotFound,
            f"Azure login error: the app {who} does not exist in tenant "
            f"{tenant or '(profile tenant)'}{tag}.",
            "Run `presencectl setup-azure` to create it, or fix client_id / tenant_id in the "
            "profile.",
        )
    if code_set & {90002, 900023, 90013}:
        return make(
            TenantNotFound,
            f"Azure login error: tenant {tenant or '(profile tenant)'} was not found{tag}.",
            "Pass the tenant id (a GUID) or its verified domain with --tenant.",
        )
    error = str(result.get("error") or "")
    # RFC 8628 device-code answers carry these protocol values (not free text).
    if error == "expired_token" or 70019 in code_set or 70020 in code_set:
        return make(
            DeviceCodeExpired,
            f"Azure login error: the device code expired before the sign-in was completed{tag}.",
            f"Run {retry} again and finish the sign-in within the time shown.",
        )
    if error in ("authorization_declined", "access_denied") or 70000 in code_set:
        return make(
            SignInDeclined,
            f"Azure login error: the sign-in was declined{tag}.",
            f"Run {retry} again and accept the request.",
        )
    log.debug("unclassified sign-in error %s codes=%s", error, codes)
    return make(
        SignInError,
        f"Azure login error for {who}: {error or 'unknown error'}{tag}.",
        "Look the code up at https://login.microsoftonline.com/error?code=<number> and run with "
        "-vv for details.",
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
