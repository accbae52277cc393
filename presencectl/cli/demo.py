"""demo: the whole product against an in-process sandbox, in one command.

Thin: runs ``presencectl.demo.run_demo`` and renders its events. On a terminal: narration on
stderr and the live view of ``sync --watch`` (``cli/live.py``); otherwise plain lines (the same
lines ``sync --watch`` prints); with ``-o json`` one JSON object per event on stdout (NDJSON).
The closing summary is data: it goes to stdout in the chosen format.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from presencectl.cli.context import AppContext, app_context
from presencectl.cli.events import plain_line
from presencectl.cli.options import (
    NoInputOption,
    OutputFormat,
    OutputOption,
    ProfileOption,
    QuietOption,
    VerboseOption,
)

_MARKS = {"ok": "✓", "created": "+", "updated": "~", "unchanged": "=", "failed": "✗"}


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Renderer:
    """Turns demo events into narration (stderr), event lines or NDJSON (stdout), or the live
    view."""

    def __init__(self, app: AppContext, profile_name: str, interval: float) -> None:
        self.app = app
        self.profile_name = profile_name
        self.interval = interval
        self.quiet = app.verbosity < 0
        self.live_capable = app.output == "table" and sys.stdout.isatty() and sys.stderr.isatty()
        self.live: Any = None
        self.stop: Any = None  # the demo's stop event (threading.Event), once it exists
        self.pipe_closed = False

    def out(self, emit: Any, *args: Any) -> None:
        """Write data to stdout; a reader that left (``demo | head -1``) stops the demo quietly."""
        if self.pipe_closed:
            return
        try:
            emit(*args)
        except BrokenPipeError:
            from presencectl.cli.pipe import silence_stdout

            self.pipe_closed = True
            silence_stdout()
            if self.stop is not None:
                self.stop.set()

    def narrate(self, line: str) -> None:
        if self.quiet:
            return
        if self.live_capable:
            from presencectl import output

            output.stderr_console().print(line, markup=False, highlight=False)
        else:
            _err(line)

    def __call__(self, event: Any) -> None:
        if self.app.json:
            from presencectl import output

            self.out(output.emit_event, event.to_dict())
            return
        if event.sync is not None:
            self._sync(event)
            return
        data = event.data
        if event.type == "step":
            mark = _MARKS.get(data["status"], "·")
            self.narrate(f"{mark} {data['step']}: {data['detail']}")
            if data["status"] == "failed" and data.get("expected"):
                self.narrate(
                    "    → expected: the sandbox's sync user, like a new Azure user, must change "
                    "its password at first sign-in; the demo does that now"
                )
        elif event.type == "setup":
            line = f"    {_MARKS.get(data['result'], '·')} {data['step']}: {data['detail']}"
            self.narrate(line)
        elif event.type == "device_code":
            # Always shown: on a real tenant nobody can finish the sign-in without it.
            _err("    " + data["message"] + " (the sandbox approves it as the admin)")
        elif event.type == "check":
            total = data["in_step"] + len(data["out_of_step"])
            if not data["out_of_step"]:
                self.narrate(
                    f"✓ in step: all {total} people show Available on both sides again, "
                    "now that every activity has ended"
                )
            else:
                self.narrate(
                    f"✗ out of step: {len(data['out_of_step'])} of {total} people do not show "
                    "Available on both sides although every activity has ended:"
                )
                for row in data["out_of_step"]:
                    self.narrate(
                        f"    {row['user']}: Teams {row['teams']}, Connect {row['connect']}"
                    )
        elif event.type == "inject":
            at = event.at.strftime("%H:%M:%S")
            side = "Teams" if data["side"] == "teams" else "Connect"
            text = f"person  {data['user']} {data['what']} in {side} ({data['value']})"
            if self.live is not None:
                self.live.note(at, text)
            elif not self.live_capable:
                self.out(_out, f"{at} {text}")

    def _sync(self, event: Any) -> None:
        if self.live_capable:
            if event.type == "start" and self.live is None:
                from presencectl.cli.live import LiveView
                from presencectl.sync.engine import EngineOptions

                self.live = LiveView(self.profile_name, EngineOptions(interval=self.interval))
                self.live.__enter__()
            if self.live is not None:
                self.live.on_event(event.sync)
            if event.type == "stop":
                self.close()
            return
        line = plain_line(event.sync)
        if line:
            self.out(_out, line)

    def close(self) -> None:
        if self.live is not None:
            live, self.live = self.live, None
            live.__exit__(None, None, None)


def _summary_rows(summary: Any) -> list[dict[str, Any]]:
    data = summary.to_dict()
    rows: list[dict[str, Any]] = []
    for key, label in (
        ("teams_to_connect", "Teams → Connect"),
        ("connect_to_teams", "Connect → Teams"),
    ):
        d = data[key]
        rows.append(
            {
                "direction": label,
                "changes": d["changes"],
                "carried": d["carried"],
                "no_write_needed": d["no_write_needed"],
                "not_seen": d["not_seen"],
                "median_s": d["median_s"],
                "worst_s": d["worst_s"],
            }
        )
    return rows


def command_as_run() -> str:
    """How the person ran presencectl, so that the commands we print work when copied:
    ``presencectl`` when that is what their PATH finds, else the path they ran
    (``.venv/bin/presencectl``)."""
    import os
    import shutil

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "presencectl"
    if os.path.basename(argv0) != "presencectl":
        return "presencectl"  # python -m presencectl, or a test: the documented name
    found = shutil.which("presencectl")
    if found and os.path.realpath(found) == os.path.realpath(shutil.which(argv0) or argv0):
        return "presencectl"
    return argv0


def closing_lines(profile: str, config_file: str) -> list[str]:
    """The demo's last words: where its profile is, and how to go on by hand."""
    cmd = command_as_run()
    return [
        f"The profile '{profile}' stays in {config_file}; the demo's sandbox stopped with it.",
        "To go on by hand (docs/getting-started.md, section 2), start a sandbox that keeps its "
        "world in another terminal:",
        f"    {cmd} sandbox serve --port 8765 --write-profile sandbox "
        "--auto-approve admin@contoso.example",
        f"then, here: {cmd} --profile sandbox setup-azure --no-input",
    ]


def demo(
    ctx: typer.Context,
    users: int = typer.Option(
        20, "--users", min=2, max=5000, help="People in the simulated organisation."
    ),
    duration: float = typer.Option(
        60, "--duration", min=5.0, help="Seconds of `sync --watch` with simulated people."
    ),
    seed: int = typer.Option(1, "--seed", help="Same seed, same people and same changes."),
    interval: float = typer.Option(
        5.0, "--interval", min=0.5, help="Teams poll period of the watch, seconds."
    ),
    force: bool = typer.Option(
        False, "--force", help="Let the demo replace a profile that is not a sandbox one."
    ),
    _profile: ProfileOption = None,
    _output: OutputOption = OutputFormat.table,
    _verbose: VerboseOption = 0,
    _quiet: QuietOption = 0,
    _no_input: NoInputOption = False,
) -> None:
    """Show the whole product on this machine, with no cloud account.

    Starts a sandbox (Entra ID + Graph + Connect) in-process, writes the profile `demo`
    (or --profile NAME; a profile that is not a sandbox one is refused unless --force, and so
    is one a running `sandbox serve` owns),
    runs setup-azure, consent --check, sync-user set/validate and enable against it, then
    `sync --watch` while simulated people make calls and meetings on both sides, and sums up.

    \b
    Examples:
      presencectl demo
      presencectl demo --users 50 --duration 30
      presencectl demo --duration 10 -o json      (NDJSON, for CI)
    """
    from presencectl.cli.signals import stop_on_signals
    from presencectl.config import config_path
    from presencectl.config_edit import guard_sandbox_profile, guard_served_profile
    from presencectl.demo import DEFAULT_PROFILE, DemoOptions, run_demo
    from presencectl.errors import PartialSyncError

    app = app_context(ctx)
    name = app.profile_name or DEFAULT_PROFILE
    guard_sandbox_profile(name, force=force, command="demo")
    guard_served_profile(name, command="demo")
    options = DemoOptions(
        users=users, duration=duration, seed=seed, interval=interval, profile_name=name
    )
    renderer = _Renderer(app, name, interval)

    def on_first(signal_name: str) -> None:  # a second Ctrl-C: stop waiting (exit 130)
        renderer.narrate("stopping: finishing the writes in flight…")

    renderer.narrate(
        f"presencectl demo: {users} simulated people, {duration:g} s of sync (Ctrl-C ends it)"
    )
    try:
        with stop_on_signals(on_first) as stop:
            renderer.stop = stop
            if renderer.pipe_closed:
                stop.set()
            summary = run_demo(options, renderer, stop=stop)
    finally:
        renderer.close()
    if renderer.pipe_closed:
        return  # the reader took what it wanted and left: a quiet end, exit 0 (as `yes | head`)
    if not app.json:
        median, worst = summary.propagation()
        app.render(
            _summary_rows(summary),
            columns=[
                "direction", "changes", "carried", "no_write_needed", "not_seen",
                "median_s", "worst_s",
            ],
            headers={
                "direction": "Direction",
                "changes": "Changes",
                "carried": "Carried",
                "no_write_needed": "No write needed",
                "not_seen": "Not seen",
                "median_s": "Median s",
                "worst_s": "Worst s",
            },
            title="Simulated changes",
        )  # fmt: skip
        figures = [
            ("propagation median, s (both ways)", median),
            ("propagation worst, s", worst),
            ("writes to Teams", summary.writes_teams),
            ("writes to Connect", summary.writes_connect),
            ("429s absorbed", summary.throttled),
            ("failed", summary.failed),
            ("watched, s", round(summary.watched_s, 1)),
        ]
        if summary.teams_notifications:
            notes = summary.teams_notifications
            figures.append(("Teams notifications received", notes.get("received")))
            figures.append(("Teams notifications dropped", notes.get("dropped")))
        app.render(
            [{"figure": name, "value": value} for name, value in figures],
            columns=["figure", "value"],
            headers={"figure": "Sync", "value": ""},
        )
        for line in closing_lines(summary.profile, str(config_path())):
            renderer.narrate(line)
    if summary.failed:
        raise PartialSyncError(
            f"{summary.failed} write(s) failed during the demo",
            hint="run again with -v to see why",
        )
    if summary.interrupted and "sync --watch" not in summary.completed_steps:
        raise KeyboardInterrupt  # stopped before the sync started: the usual 130


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
