"""`Client`: the service's HTTP API as methods; errors become one-line `ServiceError`s."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dojo.errors import ConfigError, DojoError

CONFIG = Path("~/.config/dojo/token")
MAX_TOKEN_FILE_BYTES = 4096


class ServiceError(DojoError):
    """The server refused (status and its detail) or could not be reached."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(detail)


def load_token(explicit: str | None = None) -> str:
    """The token: given, else $DOJO_TOKEN, else the first line of ~/.config/dojo/token
    ($DOJO_CONFIG names another file)."""
    if explicit:
        return explicit
    if os.environ.get("DOJO_TOKEN"):
        return os.environ["DOJO_TOKEN"].strip()
    path = Path(os.environ.get("DOJO_CONFIG", str(CONFIG))).expanduser()
    if path.is_file():
        return _token_from_file(path)
    raise DojoError(f"no token: set DOJO_TOKEN or write it to {path} "
                    "(dojo admin tenant create prints one)")


def _token_from_file(path: Path) -> str:
    """The first non-blank line of a token file, read bounded (a token is ~50 characters); a
    file that is empty, not UTF-8 or unreadable is a DojoError naming it."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
        text = raw.decode("utf-8-sig")
    except OSError as err:
        raise DojoError(f"{path}: cannot read the token file ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise DojoError(f"{path}: not UTF-8 text: expected the token `dojo admin tenant create` "
                        "printed") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(raw) > MAX_TOKEN_FILE_BYTES or not lines:
        size = "empty" if not lines else f"over {MAX_TOKEN_FILE_BYTES:,} bytes"
        raise DojoError(f"{path}: {size}: expected the token `dojo admin tenant create` printed "
                        "on its first line")
    return lines[0]


def _quoted(job_id: str) -> str:
    """A job id as one path segment: `../x` or `a b` reach the server as the id they are."""
    from urllib.parse import quote

    return quote(job_id, safe="")


def check_server(server: str) -> str:
    """`server` without its trailing /; a DojoError unless it is an http(s) URL with a host
    and a valid port, so a typo is named, not reported as an unreachable server."""
    from urllib.parse import urlsplit

    expected = "an http:// or https:// URL like http://127.0.0.1:8600"
    if not server.isprintable() or any(c.isspace() for c in server):
        # a line break (a DOJO_SERVER read from a file) reached the Host header, an escape the
        # request line: http.client refused each with a traceback
        raise ConfigError("--server", "server", server, f"{expected}, without spaces, line "
                          "breaks or control characters")
    try:
        parts = urlsplit(server)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as err:
        raise ConfigError("--server", "server", server, f"{expected} ({err})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("--server", "server", server, expected)
    if "@" in parts.netloc:  # user:password@ was sent nowhere and echoed in every error
        shown = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
        raise ConfigError("--server", "server", shown, f"{expected}, without user:password@ "
                          "(the token authenticates; the part before @ is not shown)")
    return server.rstrip("/")


# What the CLI reads of each answer: (key, type) pairs. A server that is not a dojo service (or
# another version) answering 200 with other JSON is named, not a KeyError in a verb.
_JOB = (("id", str), ("state", str), ("reason", str), ("kind", str), ("tiles", int),
        ("runs", int), ("spec", dict))
_USAGE = (("tenant", str), ("role", str), ("quota_tile_hours", (int, float)),
          ("used_tile_hours", (int, float)), ("committed_tile_hours", (int, float)))
_LOGS = (("text", str), ("offset", int), ("done", bool))


def _shaped(server: str, path: str, value: Any, fields: tuple[tuple[str, Any], ...],
            many: bool = False) -> Any:
    """`value` when it is an object with `fields` (a list of such objects with `many`); else a
    ServiceError saying the server is not a dojo service, naming the first missing field."""
    items = value if many and isinstance(value, list) else [value]
    if many and not isinstance(value, list):
        raise ServiceError(0, f"{server}: not a dojo service (its answer to {path} is not a "
                           "list)")
    for item in items:
        if not isinstance(item, dict):
            raise ServiceError(0, f"{server}: not a dojo service (its answer to {path} holds "
                               f"{type(item).__name__}, not an object)")
        for key, kind in fields:
            if (isinstance(item.get(key), bool) and kind is not bool) or \
                    not isinstance(item.get(key), kind):
                raise ServiceError(0, f"{server}: not a dojo service (its answer to {path} has "
                                   f"no valid '{key}')")
    return value


class Client:
    """One server, one token. Every method returns the decoded JSON of the response."""

    def __init__(self, server: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.server = check_server(server)
        self.token = load_token(token)
        if not self.token.isascii() or not self.token.isprintable() or " " in self.token:
            raise DojoError("the token holds spaces or characters other than printable ASCII "
                            "(expected the token `dojo admin tenant create` printed)")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read()).get("detail", err.reason)
            except (ValueError, AttributeError):
                detail = err.reason
            if isinstance(detail, list):
                detail = "; ".join(str(d) for d in detail)
            detail = " ".join(str(detail).split())
            raise ServiceError(err.code, f"{self.server}: {err.code} {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError):  # connected, or connecting, and no answer
                raise ServiceError(0, f"{self.server}: no answer within {self.timeout_s:g} s "
                                   "(the client's timeout: --timeout-s or DOJO_TIMEOUT_S)"
                                   ) from None
            raise ServiceError(0, f"{self.server}: cannot reach the server ({reason})") from None
        try:
            return json.loads(raw or b"null")
        except ValueError:  # a 200 that is not JSON: some other web server
            raise ServiceError(0, f"{self.server}: not a dojo service (its answer to {path} is "
                               "not JSON)") from None

    def _get(self, method: str, path: str, fields: tuple[tuple[str, Any], ...],
             many: bool = False, body: Any = None, headers: dict[str, str] | None = None
             ) -> Any:
        """`_call`, the answer checked to hold `fields` (`_shaped`)."""
        return _shaped(self.server, path, self._call(method, path, body, headers), fields, many)

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._get("POST", "/api/jobs", _JOB, body=spec, headers=headers)

    def jobs(self) -> Any:
        return self._get("GET", "/api/jobs", _JOB, many=True)

    def job(self, job_id: str) -> Any:
        return self._get("GET", f"/api/jobs/{_quoted(job_id)}", _JOB)

    def cancel(self, job_id: str) -> Any:
        return self._get("POST", f"/api/jobs/{_quoted(job_id)}/cancel", _JOB)

    def usage(self) -> Any:
        return self._get("GET", "/api/usage", _USAGE)

    def machine(self) -> Any:
        return self._call("GET", "/api/machine")

    def logs(self, job_id: str, offset: int = 0) -> Any:
        return self._get("GET", f"/api/jobs/{_quoted(job_id)}/logs?offset={offset}", _LOGS)

    def follow(self, job_id: str, poll_s: float = 1.0) -> Iterator[str]:
        """Log text as it is written, until the job is over (`dojo logs -f`)."""
        offset = 0
        while True:
            part = self.logs(job_id, offset)
            if part["text"]:
                yield part["text"]
            offset = part["offset"]
            if part["done"] and not part["text"]:
                return
            if not part["text"]:
                time.sleep(poll_s)

    def wait(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 1.0) -> Any:
        """Poll until the job is succeeded, failed or cancelled; returns it."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise ServiceError(0, f"job {job_id} still {job['state']} after {timeout_s:g} s")
            time.sleep(poll_s)
