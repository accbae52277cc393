"""Shared machinery of the benchmarks: a sandbox in its own process, a profile and an app
registration for it, timing, peak RSS, sandbox request counts, tables and JSON results.

The sandbox runs as ``python -m presencectl sandbox serve`` in a child process, so that its CPU and
memory are not the benchmark's: the bench process measures only the client (presencectl), and the
server's Python work does not steal the client's GIL. Everything the benchmark needs from the
sandbox goes through its control API (``/_sandbox/...``) over HTTPS, as a test would.

Every benchmark process gets its own config and state directories (``PRESENCECTL_CONFIG_DIR``,
``PRESENCECTL_STATE_DIR``) and the file secrets backend, set in ``os.environ`` by
:func:`isolated_env` — so a bench run never touches the user's real profiles or keyring.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import select
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# PRESENCECTL_BENCH_RESULTS redirects the JSON files (the smoke test writes to a temp dir).
RESULTS_DIR = Path(os.environ.get("PRESENCECTL_BENCH_RESULTS") or ROOT / "bench" / "results")
ADMIN = "admin@contoso.example"
PROFILE = "bench"
START_TIMEOUT_S = 60.0


# -- environment -----------------------------------------------------------------------------
@contextlib.contextmanager
def isolated_env() -> Iterator[Path]:
    """A temp config/state dir and the file secrets backend for this process and its children."""
    keys = (
        "PRESENCECTL_CONFIG_DIR",
        "PRESENCECTL_STATE_DIR",
        "PRESENCECTL_SECRETS_BACKEND",
        "PRESENCECTL_PROFILE",
    )
    saved = {k: os.environ.get(k) for k in keys}
    with tempfile.TemporaryDirectory(prefix="presencectl-bench-") as tmp:
        base = Path(tmp)
        os.environ["PRESENCECTL_CONFIG_DIR"] = str(base / "config")
        os.environ["PRESENCECTL_STATE_DIR"] = str(base / "state")
        os.environ["PRESENCECTL_SECRETS_BACKEND"] = "file"
        os.environ.pop("PRESENCECTL_PROFILE", None)
        try:
            yield base
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


_T0 = time.perf_counter()


def progress(message: str) -> None:
    """A timestamped progress line on stderr (tables go to stdout)."""
    print(f"  [{time.perf_counter() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def _quiet_secrets_warning() -> None:
    import logging

    logging.getLogger("presencectl.secrets").setLevel(logging.ERROR)


# -- the sandbox in its own process ----------------------------------------------------------
@dataclass
class SandboxProcess:
    """``presencectl sandbox serve`` in a child process; use as a context manager."""

    users: int = 25
    seed: int = 1
    throttle: int = 1500
    throttle_window: float = 30.0
    extra_args: Sequence[str] = ()
    base_url: str = ""
    ca_bundle: str = ""
    start_s: float = 0.0
    _proc: subprocess.Popen[str] | None = None
    _control: httpx.Client | None = None
    _stderr: Any = None

    def __enter__(self) -> SandboxProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        _quiet_secrets_warning()
        args = [
            sys.executable,
            "-m",
            "presencectl",
            "sandbox",
            "serve",
            "--port",
            "0",
            "--users",
            str(self.users),
            "--seed",
            str(self.seed),
            "--throttle",
            str(self.throttle),
            "--throttle-window",
            str(self.throttle_window),
            "--auto-approve",
            ADMIN,
            "--write-profile",
            PROFILE,
            *self.extra_args,
        ]
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        started = time.perf_counter()
        self._proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=os.environ.copy()
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT_S)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            self._stderr.seek(0)
            err = self._stderr.read()[-2000:]
            self.stop()
            raise RuntimeError(f"sandbox did not start: {err}")
        info = json.loads(line)
        self.start_s = time.perf_counter() - started
        self.base_url = info["base_url"]
        self.ca_bundle = info["ca_bundle"]
        self._control = httpx.Client(
            base_url=self.base_url,
            verify=ssl.create_default_context(cafile=self.ca_bundle),
            timeout=120.0,
        )

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def control(self) -> httpx.Client:
        assert self._control is not None, "sandbox not started"
        return self._control

    # -- control API ---------------------------------------------------------------------------
    def profile_info(self) -> dict[str, Any]:
        return dict(self.control.get("/_sandbox/profile").raise_for_status().json())

    def stats(self) -> dict[str, Any]:
        return dict(self.control.get("/_sandbox/stats").raise_for_status().json())

    def reset_stats(self) -> None:
        self.control.delete("/_sandbox/stats").raise_for_status()

    def faults(self, **values: Any) -> dict[str, Any]:
        return dict(self.control.post("/_sandbox/faults", json=values).raise_for_status().json())

    def set_teams(self, email: str, availability: str, activity: str) -> None:
        self.control.post(
            "/_sandbox/teams/presence",
            json={"user": email, "availability": availability, "activity": activity},
        ).raise_for_status()

    def set_connect(self, email: str, status: str) -> None:
        self.control.post(
            "/_sandbox/connect/presence", json={"user": email, "status": status}
        ).raise_for_status()

    def teams(self, email: str) -> dict[str, Any]:
        r = self.control.get("/_sandbox/teams/presence", params={"user": email})
        return dict(r.raise_for_status().json())

    def connect(self, email: str) -> dict[str, Any]:
        r = self.control.get("/_sandbox/connect/presence", params={"user": email})
        return dict(r.raise_for_status().json())

    def server_rss_mb(self) -> float | None:
        """The sandbox process's current RSS (Linux /proc), for the record."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def server_cpu_s(self) -> float | None:
        """CPU time (user + system) the sandbox process has used so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, ValueError, IndexError):
            return None

    # -- the app registration, the real way ----------------------------------------------------
    def setup_azure(self) -> Any:
        """``presencectl --profile bench --no-input setup-azure`` (device code auto-approved):
        registers the app, stores its secret, grants admin consent; returns the Profile."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "presencectl",
                "--profile",
                PROFILE,
                "--no-input",
                "-o",
                "json",
                "setup-azure",
            ],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"setup-azure failed: {result.stderr[-2000:]}{result.stdout}")
        from presencectl.config import load_profile

        return load_profile(PROFILE)

    def probe_latency_ms(self, n: int = 20) -> dict[str, float]:
        """Median round trip of a tiny GET with a body (/_sandbox/health) on a kept-alive
        connection: the sandbox's fixed per-response cost (see docs/performance.md)."""
        self.control.get("/_sandbox/health")
        times = []
        for _ in range(n):
            t = time.perf_counter()
            self.control.get("/_sandbox/health")
            times.append((time.perf_counter() - t) * 1000)
        return {"median_ms": median(times), "min_ms": min(times)}


# -- presencectl's clients for the bench profile ---------------------------------------------
@dataclass
class Pair:
    """One person on both sides, matched by email."""

    email: str
    azure_id: str
    connect_id: str


def graph_client(profile: Any, *, limit: int, window: float, **kwargs: Any) -> Any:
    """presencectl's GraphClient for the profile: msal client-credentials token (the real way,
    through presencectl.transport.msal_http_client), a limiter sized to the sandbox's throttle."""
    from presencectl.graph.client import GraphClient
    from presencectl.graph.ratelimit import RateLimiter
    from presencectl.identity.tokens import app_token_provider

    return GraphClient(
        profile.graph_url,
        app_token_provider(profile),
        profile.http_settings(),
        limiter=RateLimiter(limit=limit, window=window),
        **kwargs,
    )


async def matched_pairs(profile: Any) -> list[Pair]:
    """People on both sides: Graph directory x Connect address book, by email (the bench's own
    simple match; the product's matcher is presencectl.sync.match)."""
    from presencectl.connect import connect_client_for
    from presencectl.connect.directory import list_contacts
    from presencectl.graph.users import list_users, smtp_addresses

    async with graph_client(profile, limit=10**6, window=30.0) as graph:
        users = await list_users(graph)
    async with connect_client_for(profile) as connect:
        contacts = await list_contacts(connect)
    by_email: dict[str, str] = {}
    for user in users:
        for address in smtp_addresses(user):
            by_email.setdefault(address, user.id)
    pairs = []
    for contact in contacts:
        if contact.email and (azure_id := by_email.get(contact.email.lower())):
            pairs.append(Pair(contact.email.lower(), azure_id, contact.id))
    return pairs


# -- measuring -------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak RSS of this process so far, MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class Timer:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    _w: float = 0.0
    _c: float = 0.0

    def __enter__(self) -> Timer:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._w
        self.cpu_s = time.process_time() - self._c


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def graph_requests(stats: dict[str, Any]) -> int:
    """Graph requests as Graph counts them (each $batch member counts; the envelope does not):
    the sandbox's per-endpoint counters, Graph endpoints only (not Entra, not Connect)."""
    reqs: dict[str, int] = stats.get("requests", {})
    return sum(
        n for k, n in reqs.items() if k.startswith(("graph.", "graph_")) and k != "graph.batch"
    )


def presence_requests(stats: dict[str, Any]) -> int:
    """Presence requests the sandbox throttles (reads and writes, each ``$batch`` member one by
    one), counting those it answered 429: its routes named ``graph.*Presence*``."""
    reqs: dict[str, int] = stats.get("requests", {})
    return sum(n for k, n in reqs.items() if k.startswith("graph.") and "presence" in k.lower())


def throttle_minimum_s(accepted: int, limit: int, window: float) -> float:
    """The throttle-bound minimum wall time of ``accepted`` presence requests against a server
    that accepts ``limit`` per ``window`` seconds: requests / limit x window (its rate). From an
    empty window a sliding-window server lets the first ``limit`` through at once, so a run that
    needs fewer than ``limit`` is not bound by the throttle, and one that needs a few windows can
    finish a little under this figure."""
    return accepted / limit * window


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


# -- reporting -------------------------------------------------------------------------------
@dataclass
class Report:
    """One benchmark's result: rows for the table, and everything for the JSON file."""

    name: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "rows": self.rows,
            "notes": self.notes,
            **self.extra,
        }

    def table(self) -> str:
        return format_table(self.columns, self.rows)

    def emit(self, *, write: bool = True) -> Path | None:
        print(f"\n== {self.name} ==")
        print(self.table())
        for note in self.notes:
            print(f"  note: {note}")
        if not write:
            return None
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        print(f"  -> {path}")
        return path


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def format_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(row, widths, numeric, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    return [int(x.replace("_", "").replace("k", "000")) for x in text.split(",") if x.strip()]
