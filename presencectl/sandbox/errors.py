"""Error bodies the sandbox sends, shaped exactly like the real services' ones.

Owns: the Graph error body (``{"error": {"code", "message", "innerError": {"date", "request-id",
"client-request-id"}}}``), the Entra ID token error body (``error, error_description,
error_codes, timestamp, trace_id, correlation_id[, suberror]``), the ``GraphError`` exception every
Graph route may raise (the app turns it into a response), and the permission checks
(``bearer_claims``, ``require``) and the request-body reader (``read_json_object``) shared by
every Graph endpoint of the sandbox.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from presencectl.sandbox.world import Claims, World


def _utc_now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------- Graph


def graph_error_body(
    code: str, message: str, client_request_id: str | None = None
) -> dict[str, Any]:
    """The body Microsoft Graph sends with every 4xx/5xx."""
    request_id = str(uuid.uuid4())
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": _utc_now_iso(),
                "request-id": request_id,
                "client-request-id": client_request_id or request_id,
            },
        }
    }


class GraphError(Exception):
    """Raise from a Graph route: the app answers ``status`` with a Graph error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self, client_request_id: str | None = None) -> dict[str, Any]:
        return graph_error_body(self.code, self.message, client_request_id)

    def to_response(self, request: Request | None = None) -> JSONResponse:
        crid = request.headers.get("client-request-id") if request is not None else None
        return JSONResponse(self.body(crid), status_code=self.status, headers=self.headers)


def graph_error(
    status: int,
    code: str,
    message: str,
    request: Request | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A ready Graph error response (for routes that return instead of raising)."""
    return GraphError(status, code, message, headers).to_response(request)


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def not_found(message: str, code: str = "Request_ResourceNotFound") -> GraphError:
    return GraphError(404, code, message)


async def read_json_object(request: Request) -> dict[str, Any]:
    """The JSON object a Graph request sends; 400 as Graph words it otherwise: an empty body is
    "Empty Payload. JSON content expected.", a body that is not JSON "Unable to read JSON request
    payload. …" (both seen from Graph in microsoftgraph/microsoft-graph-docs-contrib issues
    #7083 and #6337), and JSON that is not an object is refused too."""
    raw = await request.body()
    if not raw.strip():
        raise bad_request("Empty Payload. JSON content expected.")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise bad_request(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and "
            "payload is of valid JSON format."
        ) from exc
    if not isinstance(data, dict):
        raise bad_request("Invalid request body: a JSON object is expected.")
    return data


def bearer_claims(world: World, request: Request | Mapping[str, str]) -> Claims:
    """The claims of the request's bearer token, or a 401 GraphError as Graph sends it.

    ``request`` may be a Starlette request or a plain header mapping (``$batch`` members).
    """
    headers = request.headers if isinstance(request, Request) else request
    header = None
    for key, value in headers.items():
        if key.lower() == "authorization":
            header = value
            break
    if not header or not header.strip():
        raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
    claims = world.verify_bearer(header, check_expiry=False)
    if claims is None:
        raise GraphError(
            401,
            "InvalidAuthenticationToken",
            "IDX14100: JWT is not well formed, there are no dots (.)."
            if "." not in header
            else "Access token validation failure. Invalid audience.",
        )
    if claims.kind == "connect":
        raise GraphError(
            401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience."
        )
    if claims.exp <= world.clock.now():
        raise GraphError(
            401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
        )
    return claims


def require(
    claims: Claims,
    app_roles: Iterable[str] = (),
    scopes: Iterable[str] = (),
    code: str = "Authorization_RequestDenied",
    message: str = "Insufficient privileges to complete the operation.",
) -> None:
    """403 unless an app token carries one of ``app_roles`` or a delegated one one of ``scopes``.

    List every permission that grants the access (e.g. ``User.Read.All`` and
    ``Directory.Read.All``); a kind with no acceptable permission listed is always refused.
    Presence endpoints pass ``code="Forbidden"`` as Graph does there.
    """
    if claims.kind == "app":
        ok = bool(claims.roles & set(app_roles))
    elif claims.kind == "delegated":
        ok = bool(claims.scp & set(scopes))
    else:
        ok = False
    if not ok:
        raise GraphError(403, code, message)


# --------------------------------------------------------------------------- Entra ID

ENTRA_MESSAGES: dict[int, str] = {
    50034: "The user account {user} does not exist in the {tenant} directory. To sign into this "
    "application, the account must be added to the directory.",
    50053: "The account is locked, you've tried to sign in too many times with an incorrect "
    "user ID "
    "or password.",
    50055: "The password is expired.",
    50057: "The user account is disabled.",
    50076: "Due to a configuration change made by your administrator, or because you moved to "
    "a new "
    "location, you must use multi-factor authentication to access '{resource}'.",
    50126: "Error validating credentials due to invalid username or password.",
    53003: "Access has been blocked by Conditional Access policies. The access policy does not "
    "allow token issuance.",
    65001: "The user or administrator has not consented to use the application with ID "
    "'{client_id}' "
    "named '{app_name}'. Send an interactive authorization request for this user and resource.",
    7000215: "Invalid client secret provided. Ensure the secret being sent in the request is the "
    "client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
    7000218: "The request body must contain the following parameter: 'client_assertion' or "
    "'client_secret'.",
    700016: "Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
    "This can happen if the application has not been installed by the administrator of the tenant "
    "or consented to by any user in the tenant. You may have sent your authentication request to "
    "the wrong tenant.",
    90002: "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
    "signing into the correct cloud.",
    70000: "The provided value for the 'refresh_token' or 'code' is invalid, expired or revoked.",
    700082: "The refresh token has expired due to inactivity.",
    50173: "The provided grant has expired due to it being revoked, and a fresh auth token is "
    "needed. Either an admin or a user revoked the tokens for this user, causing subsequent "
    "token refreshes to fail and require reauthentication. Have the user sign in again.",
    70043: "The refresh token has expired or is invalid due to sign-in frequency checks by "
    "Conditional Access.",
    70016: "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
    70019: "Verification code expired.",
    70011: "The provided request must include a 'scope' input parameter.",
    900144: "The request body must contain the following parameter: '{parameter}'.",
    70003: "The app requested an unsupported grant type '{grant_type}'.",
    1002016: "You are using TLS version 1.0, 1.1 and/or 3DES cipher which are deprecated.",
}


def entra_error_body(
    error: str,
    error_code: int,
    description: str | None = None,
    suberror: str | None = None,
    correlation_id: str | None = None,
    **fmt: str,
) -> dict[str, Any]:
    """The token endpoint's error body: ``AADSTS<code>: <message>`` plus trace ids and time."""
    trace_id = str(uuid.uuid4())
    correlation_id = correlation_id or str(uuid.uuid4())
    now = _dt.datetime.now(_dt.UTC)
    timestamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    if description is None:
        template = ENTRA_MESSAGES.get(error_code, "")
        try:
            description = template.format(**fmt)
        except KeyError:
            description = template
    full = (
        f"AADSTS{error_code}: {description} Trace ID: {trace_id} Correlation ID: {correlation_id} "
        f"Timestamp: {now.strftime('%Y-%m-%d %H:%M:%S')}Z"
    )
    body: dict[str, Any] = {
        "error": error,
        "error_description": full,
        "error_codes": [error_code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
    }
    if suberror:
        body["suberror"] = suberror
    body["error_uri"] = "https://login.microsoftonline.com/error?code=" + str(error_code)
    return body


def entra_error(
    error: str,
    error_code: int,
    description: str | None = None,
    suberror: str | None = None,
    status: int = 400,
    correlation_id: str | None = None,
    **fmt: str,
) -> JSONResponse:
    """A ready Entra error response (400 unless told; 401 for a bad client secret)."""
    body = entra_error_body(error, error_code, description, suberror, correlation_id, **fmt)
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store, no-cache"})
