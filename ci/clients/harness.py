"""What the Python conversations share: the sandbox's address, an authorization code without a
browser, the transport pacer, step reporting and the list of known library faults.

Every address is the local sandbox: a library that tries any other host fails the step.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import traceback
import urllib.parse
import urllib.request
from pathlib import Path

SANDBOX = os.environ["SANDBOX_URL"].rstrip("/")
HOST = os.environ["AMO_HOST"]
SUBDOMAIN = HOST.split(".", 1)[0]
CLIENT_ID = os.environ["AMO_CLIENT_ID"]
CLIENT_SECRET = os.environ["AMO_CLIENT_SECRET"]
REDIRECT_URI = os.environ["AMO_REDIRECT_URI"]
ACCOUNT_URL = f"{SANDBOX}/{HOST}"

# amoCRM allows 7 requests a second; 1/7 s between request starts keeps any second at 7, and the
# margin absorbs jitter between a request's start and its arrival.
PACE_SECONDS = 1 / 7 + 0.03


def sandbox_url(url: str) -> str:
    """Map ``https://{HOST}/…`` (what a library builds) onto the sandbox; refuse anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname == HOST and parts.port is None:
        rest = parts.path + (f"?{parts.query}" if parts.query else "")
        return f"{ACCOUNT_URL}{rest}"
    if url.startswith(SANDBOX + "/"):
        return url
    raise RuntimeError(f"refusing to leave the machine: {url}")


class Pacer:
    """Spaces request starts by ``PACE_SECONDS``, for libraries that do not throttle themselves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0.0
        self.enabled = True

    def wait(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            delay = self._last + PACE_SECONDS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._last = time.monotonic()


def _control(method: str, path: str, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{SANDBOX}/_sandbox/{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def authorization_code(state: str) -> str:
    """The seller clicks Allow on the consent page: the sandbox's scripted consent route answers
    with amoCRM's redirect, whose ``code`` the integration trades for tokens."""
    query = urllib.parse.urlencode(
        {"client_id": CLIENT_ID, "state": state, "mode": "popup", "account": HOST, "decision": "allow"}
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(f"{SANDBOX}/_sandbox/approve?{query}", timeout=10)
    except urllib.error.HTTPError as exc:
        if exc.code != 302:
            raise
        location = exc.headers["Location"]
    else:
        raise RuntimeError("the consent route did not redirect")
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    if params.get("state") != state or params.get("referer") != HOST:
        raise RuntimeError(f"unexpected redirect {location}")
    return params["code"]


def sandbox_lead(lead_id: int) -> dict:
    """The lead as the sandbox stores it, to check what a library wrote."""
    leads = _control("GET", f"accounts/{HOST}/leads")
    assert isinstance(leads, list)
    return next(lead for lead in leads if lead["id"] == lead_id)


def known_faults(library: str) -> dict[str, str]:
    """Steps listed in known-faults.md for ``library``: ``| `library` | `step` | why |`` rows of its
    "## Steps" section."""
    text = (Path(__file__).parent / "known-faults.md").read_text(encoding="utf-8")
    row = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|(.*)\|\s*$")
    faults = {}
    in_steps = False
    for line in text.splitlines():
        if line.startswith("## "):
            in_steps = line.strip() == "## Steps"
        m = row.match(line)
        if in_steps and m and m.group(1) == library:
            faults[m.group(2)] = m.group(3).strip()
    return faults


class Conversation:
    """Runs named steps, prints ``ok`` / ``FAIL`` / ``known-fault`` for each and a summary."""

    def __init__(self, library: str) -> None:
        self.library = library
        self.known = known_faults(library)
        self.counts = {"ok": 0, "FAIL": 0, "known-fault": 0}
        self.state: dict[str, object] = {}

    def _report(self, outcome: str, name: str, note: str = "") -> None:
        self.counts[outcome] += 1
        print(f"[{self.library}] {outcome:<11} {name}{(' — ' + note) if note else ''}", flush=True)

    def _missing(self, name: str, needs: tuple[str, ...]) -> bool:
        missing = [n for n in needs if n not in self.state]
        if missing:
            outcome = "known-fault" if name in self.known else "FAIL"
            self._report(outcome, name, f"not run: an earlier step gave no {', '.join(missing)}")
        return bool(missing)

    def _failed(self, name: str, exc: Exception) -> None:
        detail = f"{type(exc).__name__}: {exc}"[:400]
        if name in self.known:
            self._report("known-fault", name, detail)
        else:
            self._report("FAIL", name, detail)
            traceback.print_exc(limit=4, file=sys.stdout)

    def _passed(self, name: str) -> None:
        note = "listed in known-faults.md but passed: review the entry" if name in self.known else ""
        self._report("ok", name, note)

    def step(self, name: str, needs: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
        """Decorator: runs the function at once as step ``name``."""

        def run(fn):  # type: ignore[no-untyped-def]
            if self._missing(name, needs):
                return fn
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the run
                self._failed(name, exc)
            else:
                self._passed(name)
            return fn

        return run

    async def run_async(self, name: str, needs: tuple[str, ...], fn) -> None:  # type: ignore[no-untyped-def]
        """Runs coroutine function ``fn`` as step ``name``."""
        if self._missing(name, needs):
            return
        try:
            await fn()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the run
            self._failed(name, exc)
        else:
            self._passed(name)

    def finish(self) -> int:
        c = self.counts
        print(
            f"[{self.library}] summary: {c['ok']} ok, {c['known-fault']} known-fault, {c['FAIL']} FAIL",
            flush=True,
        )
        return 1 if c["FAIL"] else 0
