"""A Twilio REST stand-in: a real HTTP server on 127.0.0.1 speaking the Messages API wire format.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP Basic auth (account sid +
auth token) and a form body answers 201 with a Message resource, like Twilio. Bad credentials
get 401 with Twilio's error JSON (code 20003). Every request is recorded, thread-safely.

Failures on demand: ``fail_next(count, status, code, message)`` makes the next ``count``
message creations answer with that status and Twilio's error JSON. ``hold()`` makes requests
wait (after being recorded) until ``release()``, so a test can act while a send is in flight.

Media, as Twilio serves an MMS's ``MediaUrlN``: ``add_media(message_sid, data, content_type)``
gives ``/2010-04-01/Accounts/{sid}/Messages/{MM...}/Media/{ME...}``, which needs Basic auth and
answers 307 to a short-lived "CDN" URL (``/cdn/<token>``, no auth: the URL is the secret), like
Twilio's redirect to mms.twiliocdn.com. Unknown media is 404 with Twilio's error JSON;
``media_fail_next(count, status)`` makes the next media requests answer ``status``.

Runs in a daemon thread, so the test's event loop (the product's sender) stays free.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from tests.helpers import TWILIO_SID, TWILIO_TOKEN

API = "/2010-04-01"
MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
MESSAGE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$")
MEDIA = re.compile(
    r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<message>[^/]+)/Media/(?P<sid>ME[0-9a-f]+)$"
)
CDN = re.compile(r"^/cdn/(?P<token>[0-9a-f]+)$")
SID = re.compile(r"^SM[0-9a-f]{32}$")
HOLD_LIMIT = 30.0  # seconds a held request waits at most (a forgotten release() cannot hang)


def error_body(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's (legacy) REST error shape."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass(frozen=True)
class TwilioRequest:
    method: str
    path: str
    auth: tuple[str, str] | None
    form: dict[str, str]
    headers: dict[str, str]
    status: int  # what the stand-in answered


@dataclass(frozen=True)
class Raw:
    """A non-JSON answer (media bytes, a redirect)."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def problem_body(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's newer error shape (RFC 9457 problem details), which the SDK raises as
    ``TwilioServiceException`` instead of ``TwilioRestException``."""
    return {
        "type": f"https://www.twilio.com/docs/errors/{code}",
        "title": "Bad request" if status < 500 else "Service unavailable",
        "status": status,
        "code": code,
        "detail": message,
        "instance": f"/errors/{uuid.uuid4().hex}",
    }


@dataclass
class _Failure:
    status: int
    code: int
    message: str
    problem: bool = False


@dataclass
class TwilioStandIn:
    account_sid: str = TWILIO_SID
    auth_token: str = TWILIO_TOKEN
    requests: list[TwilioRequest] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (message sid, media sid) -> (bytes, content type)
    media: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._media_failures: list[int] = []
        self._cdn: dict[str, tuple[str, str]] = {}
        self._gate = threading.Event()
        self._gate.set()
        self._arrived = threading.Condition(self._lock)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    # -- control -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> TwilioStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        code: int | None = None,
        message: str | None = None,
        *,
        problem: bool = False,
    ) -> None:
        """The next ``count`` message creations answer ``status`` with Twilio's error JSON
        (``problem=True``: in the RFC 9457 shape)."""
        failure = _Failure(
            status,
            code if code is not None else (20500 if status >= 500 else 21211),
            message
            or (
                "An internal server error has occurred"
                if status >= 500
                else "The 'To' number is not a valid phone number."
            ),
            problem,
        )
        with self._lock:
            self._failures.extend([failure] * count)

    def add_media(self, message_sid: str, data: bytes, content_type: str) -> str:
        """Store a media file of an inbound message; returns its MediaUrl, as Twilio sends it."""
        media_sid = "ME" + uuid.uuid4().hex
        with self._lock:
            self.media[(message_sid, media_sid)] = (data, content_type)
        return self.media_url(message_sid, media_sid)

    def media_url(self, message_sid: str, media_sid: str) -> str:
        return (
            f"{self.url}{API}/Accounts/{self.account_sid}/Messages/{message_sid}/Media/{media_sid}"
        )

    def media_fail_next(self, count: int = 1, status: int = 503) -> None:
        with self._lock:
            self._media_failures.extend([status] * count)

    @property
    def media_requests(self) -> list[TwilioRequest]:
        """Media fetches (the API URL and the CDN URL it redirects to), in arrival order."""
        with self._lock:
            return [r for r in self.requests if MEDIA.match(r.path) or CDN.match(r.path)]

    def hold(self) -> None:
        """Requests from now on wait (already recorded) until ``release()``."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least ``count`` requests were recorded (for use in a thread)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{len(self.requests)} of {count} requests arrived")

    @property
    def sent(self) -> list[TwilioRequest]:
        """Message creations (POST .../Messages.json), in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and MESSAGES.match(r.path)]

    # -- wire ----------------------------------------------------------------------------------

    def _media(
        self, method: str, path: str, auth: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any] | Raw] | None:
        api, cdn = MEDIA.match(path), CDN.match(path)
        if (api is None and cdn is None) or method != "GET":
            return None
        if api is not None and auth != (self.account_sid, self.auth_token):
            return 401, error_body(401, 20003, "Authenticate")
        if self._media_failures:
            status = self._media_failures.pop(0)
            return status, error_body(status, 20500, "An internal server error has occurred")
        if cdn is not None:
            found = self._cdn.get(cdn["token"])
            if found is None or found not in self.media:
                return 404, error_body(404, 20404, f"The requested resource {path} was not found")
            data, content_type = self.media[found]
            return 200, Raw(data, content_type)
        assert api is not None
        key = (api["message"], api["sid"])
        if api["account"] != self.account_sid or key not in self.media:
            return 404, error_body(404, 20404, f"The requested resource {path} was not found")
        token = uuid.uuid4().hex
        self._cdn[token] = key
        return 307, Raw(b"", "text/plain", {"Location": f"{self.url}/cdn/{token}"})

    def _answer(
        self, method: str, path: str, auth: tuple[str, str] | None, form: dict[str, str]
    ) -> tuple[int, dict[str, Any] | Raw]:
        if (media := self._media(method, path, auth)) is not None:
            return media
        if auth != (self.account_sid, self.auth_token):
            return 401, error_body(401, 20003, "Authenticate")
        create = MESSAGES.match(path)
        fetch = MESSAGE.match(path)
        match = create or fetch
        if match is None or method not in ("POST", "GET") or (create and method != "POST"):
            return 404, error_body(404, 20404, f"The requested resource {path} was not found")
        if match["account"] != self.account_sid:
            return 404, error_body(404, 20404, f"The requested resource {path} was not found")
        if fetch is not None:
            found = self.messages.get(fetch["sid"])
            if method != "GET" or found is None:
                return 404, error_body(404, 20404, f"The requested resource {path} was not found")
            return 200, found
        if self._failures:
            failure = self._failures.pop(0)
            shape = problem_body if failure.problem else error_body
            return failure.status, shape(failure.status, failure.code, failure.message)
        for name, code in (("To", 21604), ("From", 21603)):
            if not form.get(name):
                return 400, error_body(400, code, f"A '{name}' phone number is required.")
        if not form.get("Body") and not form.get("MediaUrl"):
            return 400, error_body(400, 21602, "Message body is required.")
        sid = "SM" + uuid.uuid4().hex
        now = format_datetime(datetime.now(UTC), usegmt=False)
        uri = f"{API}/Accounts/{self.account_sid}/Messages/{sid}.json"
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": form["Body"],
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form["From"],
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{uri[: -len('.json')]}/Media.json"},
            "to": form["To"],
            "uri": uri,
        }
        self.messages[sid] = resource
        return 201, resource


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def _handler(standin: TwilioStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            form = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
            auth = _basic_auth(self.headers.get("authorization"))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with standin._lock:
                status, payload = standin._answer(self.command, path, auth, form)
                standin.requests.append(
                    TwilioRequest(self.command, path, auth, form, headers, status)
                )
                standin._arrived.notify_all()
            standin._gate.wait(HOLD_LIMIT)
            if isinstance(payload, Raw):
                data, content_type, extra = payload.body, payload.content_type, payload.headers
            else:
                data, content_type, extra = (
                    json.dumps(payload).encode(),
                    "application/json; charset=utf-8",
                    {},
                )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="Twilio API"')
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, *args: Any) -> None:
            return None

    return Handler


@contextmanager
def running(**kwargs: Any) -> Iterator[TwilioStandIn]:
    standin = TwilioStandIn(**kwargs).start()
    try:
        yield standin
    finally:
        standin.stop()
