"""Fetching a customer's media from a provider: only from the provider's own hosts.

A webhook names the URL, so fetching whatever it names would let anyone who can reach (or
forge) a webhook make us request internal addresses (SSRF). Every hop, redirects included, must
be on the channel's allowlist (``MediaHosts``); credentials go only to the hosts that need them;
the download is bounded in time and size (the body is streamed and cut off at the cap).

``fetch_media`` raises ``MediaError``: ``permanent`` for what trying again cannot fix (a host
off the list, 4xx, too large), transient otherwise (5xx, 429, network, timeout).
"""

from __future__ import annotations

import asyncio
import mimetypes
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

MAX_REDIRECTS = 5
TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class MediaHosts:
    """Where a channel's media may come from: exact hosts and host suffixes (HTTPS only), and
    the inbox's own API base URL (any scheme: how tests and staging point at a stand-in).
    ``path_prefixes`` narrows a shared host (a cloud storage endpoint) to the provider's paths."""

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    path_prefixes: tuple[tuple[str, str], ...] = ()
    own_base_url: str | None = None

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        own = urlsplit(self.own_base_url or "")
        if own.netloc and parts.scheme == own.scheme and parts.netloc == own.netloc:
            return True
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" or not host or parts.username or parts.password:
            return False
        if host in self.hosts or host.endswith(self.suffixes):
            return True
        return any(host == h and parts.path.startswith(p) for h, p in self.path_prefixes)

    def with_own(self, base_url: str | None) -> MediaHosts:
        return MediaHosts(self.hosts, self.suffixes, self.path_prefixes, base_url)


class MediaError(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    data: bytes
    content_type: str | None
    filename: str


def filename_for(url: str, content_type: str | None, fallback: str = "attachment") -> str:
    """The last path segment, with an extension from the content type when it has none."""
    name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or fallback
    if "." not in name and content_type:
        name += mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    return name


async def fetch_media(
    url: str,
    allowed: MediaHosts,
    *,
    max_bytes: int,
    auth: tuple[str, str] | None = None,
    auth_hosts: frozenset[str] = frozenset(),
    timeout: float = TIMEOUT_SECONDS,
    client: httpx.AsyncClient | None = None,
) -> FetchedMedia:
    """GET ``url``, following at most ``MAX_REDIRECTS`` redirects that stay on the allowlist.
    ``auth`` (HTTP Basic) is sent only to ``auth_hosts`` and the inbox's own API host."""
    try:
        async with asyncio.timeout(timeout):
            if client is not None:
                return await _fetch(client, url, allowed, max_bytes, auth, auth_hosts)
            async with httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, trust_env=False
            ) as own:
                return await _fetch(own, url, allowed, max_bytes, auth, auth_hosts)
    except TimeoutError:
        raise MediaError(f"timed out after {timeout:g} s", permanent=False) from None
    except httpx.HTTPError as exc:
        raise MediaError(f"{type(exc).__name__}: {exc}", permanent=False) from exc


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    allowed: MediaHosts,
    max_bytes: int,
    auth: tuple[str, str] | None,
    auth_hosts: frozenset[str],
) -> FetchedMedia:
    own = urlsplit(allowed.own_base_url or "").netloc
    first = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if not allowed.allows(url):
            raise MediaError(f"not fetched from {parts.netloc or url!r}", permanent=True)
        send_auth = auth if parts.netloc == own or parts.hostname in auth_hosts else None
        async with client.stream("GET", url, auth=send_auth) as response:
            if response.is_redirect:
                location = response.headers.get("location", "")
                if not location:
                    raise MediaError(f"{response.status_code} without a Location", permanent=True)
                url = urljoin(url, location)
                continue
            status = response.status_code
            if status == 429 or status >= 500:
                raise MediaError(f"{parts.netloc} answered {status}", permanent=False)
            if status >= 400:
                raise MediaError(f"{parts.netloc} answered {status}", permanent=True)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise MediaError(f"{declared} bytes; the limit is {max_bytes}", permanent=True)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise MediaError(f"more than {max_bytes} bytes", permanent=True)
            content_type = response.headers.get("content-type")
            return FetchedMedia(bytes(body), content_type, filename_for(first, content_type))
    raise MediaError(f"more than {MAX_REDIRECTS} redirects", permanent=True)
