"""How the sandbox's ``$batch`` answers as a whole: 200 by default, or a throttled batch failing
whole (fault key ``batch_envelope_status``).

Owns the envelope status of a ``$batch`` answer. Microsoft documents two shapes for throttling
inside a batch: json-batching.md answers 200 with 429 members; concepts/throttling.md ("Throttling
and batching") says the batch itself fails with 424 (Failed Dependency) while each throttled member
keeps its own 429 and ``Retry-After`` in the JSON content. ``batch_envelope_status``:

- ``0`` (default): always 200, members carry their own statuses;
- ``424``: a batch with a throttled member answers 424 with every member's answer in the body
  (the documented shape) and the longest member ``Retry-After`` on the envelope;
- ``429``: a batch whose presence members would not fit under the throttle is refused whole
  before any member runs (429, ``Retry-After``, Graph's TooManyRequests body, no member answers).
  No public source shows this shape; it is the plausible other reading of "fails as a whole".
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from presencectl.sandbox.errors import GraphError, bearer_claims
from presencectl.sandbox.throttle import TICKET, check_batch_throttle
from presencectl.sandbox.world import World

# Member URLs that pass the presence throttle (getPresencesByUserId, a user's presence actions).
_PRESENCE = re.compile(r"(communications/getPresencesByUserId|/presence(/|$|\?))", re.IGNORECASE)


def refuse_whole_batch(
    world: World, request: Request, members: list[dict[str, Any]]
) -> Response | None:
    """The 429 for a batch refused as a whole (``batch_envelope_status`` 429), else None."""
    if world.faults.batch_envelope_status != 429:
        return None
    claims = bearer_claims(world, request)
    count = sum(1 for m in members if _PRESENCE.search(str(m.get("url") or "")))
    wait = check_batch_throttle(world, claims, count, request.scope.get(TICKET))
    if wait is None:
        return None
    return GraphError(
        429,
        "TooManyRequests",
        "Too many requests. The application has exceeded its presence request limit; retry "
        "after the time given in the Retry-After header.",
        headers={"Retry-After": str(wait)},
    ).to_response(request)


def batch_answer(world: World, responses: list[dict[str, Any]]) -> Response:
    """The envelope for the members' answers: 200, or 424 when one was throttled (fault)."""
    status = world.faults.batch_envelope_status
    throttled = [r for r in responses if r.get("status") == 429]
    if status == 424 and throttled:
        waits = [_retry_after(r) for r in throttled]
        return JSONResponse(
            {"responses": responses},
            status_code=424,
            headers={"Retry-After": str(max(waits))},
        )
    return JSONResponse({"responses": responses})


def _retry_after(member: dict[str, Any]) -> int:
    for key, value in (member.get("headers") or {}).items():
        if key.lower() == "retry-after":
            try:
                return max(1, int(float(value)))
            except ValueError:
                return 1
    return 1
