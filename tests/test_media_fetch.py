"""The shared media fetcher (Twilio and Meta use it): every redirect hop must stay on the
allowlist, and the size cap holds even when the server does not say how large the body is."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from channels.media import MediaError, MediaHosts, fetch_media
from channels.twilio_media import TWILIO_MEDIA_HOSTS


class Server:
    """A loopback server answering every GET with ``status``, ``headers`` and ``body``
    (``chunked``: without a Content-Length); it records the paths it was asked for."""

    def __init__(self, status: int = 200, body: bytes = b"", chunked: bool = False) -> None:
        self.status, self.body, self.chunked = status, body, chunked
        self.headers: dict[str, str] = {}
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.paths.append(self.path)
                self.send_response(server.status)
                for name, value in server.headers.items():
                    self.send_header(name, value)
                if server.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(server.body), 1000):
                        piece = server.body[i : i + 1000]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(server.body)))
                    self.end_headers()
                    self.wfile.write(server.body)

            def log_message(self, *args: Any) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def secret() -> Iterator[Server]:
    with Server(body=b"internal") as server:
        yield server


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", True),
        ("https://mms.twiliocdn.com/AC1/abc", True),
        ("https://media.twiliocdn.com/AC1/abc", True),
        ("https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC1/abc", True),
        ("https://s3-external-1.amazonaws.com/someone-elses-bucket/abc", False),
        ("http://api.twilio.com/2010-04-01/x", False),  # never in clear text
        ("https://api.twilio.com.evil.example/x", False),
        ("https://eviltwiliocdn.com/x", False),
        ("https://user:pw@api.twilio.com/x", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("file:///etc/passwd", False),
    ],
)
def test_twilio_media_hosts(url: str, allowed: bool) -> None:
    assert TWILIO_MEDIA_HOSTS.allows(url) is allowed


def test_the_inbox_api_host_is_allowed_with_its_scheme_only() -> None:
    hosts = TWILIO_MEDIA_HOSTS.with_own("http://127.0.0.1:8080")
    assert hosts.allows("http://127.0.0.1:8080/2010-04-01/x")
    assert not hosts.allows("http://127.0.0.1:8081/2010-04-01/x")
    assert not hosts.allows("http://localhost:8080/2010-04-01/x")


async def test_a_redirect_off_the_allowlist_is_not_followed(secret: Server) -> None:
    with Server(status=302) as api:
        api.headers["Location"] = f"{secret.url}/metadata"

        with pytest.raises(MediaError) as caught:
            await fetch_media(f"{api.url}/media", MediaHosts().with_own(api.url), max_bytes=100)

    assert caught.value.permanent
    assert secret.url.removeprefix("http://") in caught.value.reason
    assert api.paths == ["/media"]
    assert secret.paths == []


async def test_redirect_loops_end() -> None:
    with Server(status=307) as api:
        api.headers["Location"] = "/again"

        with pytest.raises(MediaError) as caught:
            await fetch_media(f"{api.url}/media", MediaHosts().with_own(api.url), max_bytes=100)

    assert caught.value.permanent and "redirects" in caught.value.reason
    assert len(api.paths) == 6


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_size_cap_holds(chunked: bool) -> None:
    with Server(body=b"x" * 5000, chunked=chunked) as files:
        allowed = MediaHosts().with_own(files.url)
        with pytest.raises(MediaError) as caught:
            await fetch_media(f"{files.url}/big", allowed, max_bytes=4999)
        fetched = await fetch_media(f"{files.url}/big", allowed, max_bytes=5000)

    assert caught.value.permanent and "4999" in caught.value.reason
    assert fetched.data == b"x" * 5000
