"""The words of a sync: one line per engine event, for every renderer.

Owns :func:`event_text` (what an event says: the live view's "Recent changes" and the plain
lines) and :func:`plain_line` (that text behind a ``HH:MM:SS`` stamp: ``sync --watch`` and the
demo when stdout is not a terminal). One write as a row (``sync -o json``'s ``actions``, the
dry-run plan, the csv and table "Writes", the watch's ``write`` event) is the engine's
``ActionReport.as_row``. ``cli/sync.py``, ``cli/live.py`` and ``cli/demo.py`` import this
module; it imports none of them, so none imports another.
"""

from __future__ import annotations

from typing import Any


def event_text(event: Any) -> str | None:
    """One line for a sync event (plain output and the live view); None: not worth a line."""
    data = event.data
    if event.type == "write":
        # What we change is *our* session on that side; "from" is what the side showed, which
        # may stay (a user's own DND outranks our Available): never "dnd -> available".
        to = "cleared" if data["to"] is None else data["to"]
        shown = data["from"] if data["from"] is not None else "nothing of the user's"
        text = f"{data['side']:<7} {data['user']}: our session -> {to}"
        text += f" ({data['side']} showed {shown}; {data['reason']}) {data['outcome']}"
        return text + (f": {data['error']}" if data.get("error") else "")
    if event.type == "change":
        # None: that side shows our own session, so the user's own state there is hidden.
        teams = data["teams"] if data["teams"] is not None else "(ours)"
        connect = data["connect"] if data["connect"] is not None else "(ours)"
        return f"change  {data['user']}: teams={teams} connect={connect}"
    if event.type == "start":
        if data["interval"] == "auto":
            return f"watching ({data['direction']}, Teams as often as Graph's budget allows)"
        return f"watching ({data['direction']}, every {data['interval']} s)"
    if event.type == "interval":
        share = data["budget_share"] * 100
        return (
            f"teams polled every {data['interval_s']:g} s ({data['polled_users']} users, "
            f"{data['reads_per_poll']} read(s) a poll, {share:.1f} % of Graph's presence budget)"
        )
    if event.type == "feed":
        return f"connect feed {data['state']}"
    if event.type == "notifications":
        if data.get("mode") == "notifications":
            covered, matched = data.get("users_covered", 0), data.get("users_matched", 0)
            return f"teams notifications: {covered} of {matched} people covered; {data['reason']}"
        return f"teams notifications: {data['reason']}"
    if event.type == "outage":
        return f"{data['message']} ({data['error']})"
    if event.type == "recovered":
        down = data["down_s"]
        return f"{data['service']} reachable again after {down:.0f} s: reconciling in full"
    return None


def plain_line(event: Any) -> str | None:
    """``HH:MM:SS text`` for an event worth a line; None otherwise."""
    text = event_text(event)
    return None if text is None else f"{event.at.strftime('%H:%M:%S')} {text}"


__all__ = ["event_text", "plain_line"]
