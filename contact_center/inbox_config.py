"""Typed views of an email inbox's optional features, validated with errors an admin can act on.

- ``settings.imap``: poll a mailbox over IMAP (``{"host", "port", "tls": "ssl"|"starttls"|
  "none", "folder", "poll_seconds", "mark_seen", "enabled"}``); the login is in the
  credentials as ``imap_username`` and ``imap_password``.
- ``settings.auto_reply``: acknowledge a new conversation automatically (``{"enabled",
  "subject", "text", "max_per_sender_per_day"}``).
- ``settings.pre_chat`` (web chat): ask the visitor's name and email before the first message
  (``{"enabled", "require_email", "message"}``); ``credentials.identity_secret`` lets the site
  vouch for its signed-in user's email (HMAC-SHA256, see channels/webchat.py).

The admin API checks these when an inbox is saved (400 naming the field); the poller and the
auto-reply job parse them again, so an inbox stored before this check still fails clearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TLS_MODES = ("ssl", "starttls", "none")
MIN_POLL_SECONDS = 5.0


class InboxConfigError(ValueError):
    """An inbox setting is invalid; the message names it and says what is expected."""


def _number(
    section: dict[str, Any], key: str, default: float, low: float, high: float, *, prefix: str
) -> float:
    value = section.get(key, default)
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InboxConfigError(f"{prefix}.{key}: must be a number from {low:g} to {high:g}")
    return float(value)


def _flag(section: dict[str, Any], key: str, default: bool, *, prefix: str) -> bool:
    value = section.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise InboxConfigError(f"{prefix}.{key}: must be true or false")
    return value


def _text(
    section: dict[str, Any], key: str, default: str | None, limit: int, *, prefix: str
) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise InboxConfigError(f"{prefix}.{key}: required, a non-empty string")
    if len(value) > limit:
        raise InboxConfigError(f"{prefix}.{key}: at most {limit} characters")
    return value


def _section(settings: dict[str, Any], name: str) -> dict[str, Any] | None:
    section = settings.get(name)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise InboxConfigError(f"settings.{name}: must be an object")
    return section


@dataclass(frozen=True, slots=True)
class ImapConfig:
    host: str
    port: int
    tls: str
    username: str
    password: str
    folder: str
    poll_seconds: float
    mark_seen: bool

    @classmethod
    def of(cls, settings: dict[str, Any], credentials: dict[str, Any]) -> ImapConfig | None:
        """The inbox's IMAP settings, or None when it does not poll a mailbox."""
        section = _section(settings, "imap")
        p = "settings.imap"
        if section is None or not _flag(section, "enabled", True, prefix=p):
            return None
        host = _text(section, "host", None, 253, prefix=p).strip()
        if any(c.isspace() or c in "/:@" for c in host):
            raise InboxConfigError(f"{p}.host: a host name or address, without scheme or port")
        tls = section.get("tls", "ssl")
        if tls not in TLS_MODES:
            raise InboxConfigError(f"{p}.tls: one of {', '.join(TLS_MODES)} (got {tls!r})")
        port = _number(section, "port", 993 if tls == "ssl" else 143, 1, 65535, prefix=p)
        if port != int(port):
            raise InboxConfigError(f"{p}.port: must be a whole number")
        folder = _text(section, "folder", "INBOX", 200, prefix=p)
        if not folder.isascii() or not folder.isprintable():
            raise InboxConfigError(
                f"{p}.folder: printable ASCII (give other names in IMAP's modified UTF-7)"
            )
        poll_seconds = _number(section, "poll_seconds", 60, MIN_POLL_SECONDS, 86400, prefix=p)
        mark_seen = _flag(section, "mark_seen", True, prefix=p)
        username = credentials.get("imap_username")
        password = credentials.get("imap_password")
        if not isinstance(username, str) or not username:
            raise InboxConfigError("credentials.imap_username: required when settings.imap is set")
        if not isinstance(password, str) or not password:
            raise InboxConfigError("credentials.imap_password: required when settings.imap is set")
        if any(c in username + password for c in "\r\n\0"):
            raise InboxConfigError("credentials.imap_username/imap_password: no line breaks")
        return cls(
            host=host,
            port=int(port),
            tls=str(tls),
            username=username,
            password=password,
            folder=folder,
            poll_seconds=poll_seconds,
            mark_seen=mark_seen,
        )


@dataclass(frozen=True, slots=True)
class AutoReplyConfig:
    subject: str
    text: str
    max_per_sender_per_day: int

    @classmethod
    def of(cls, settings: dict[str, Any]) -> AutoReplyConfig | None:
        """The inbox's automatic acknowledgement, or None when it sends none."""
        section = _section(settings, "auto_reply")
        p = "settings.auto_reply"
        if section is None or not _flag(section, "enabled", True, prefix=p):
            return None
        cap = _number(section, "max_per_sender_per_day", 3, 1, 100, prefix=p)
        if cap != int(cap):
            raise InboxConfigError(f"{p}.max_per_sender_per_day: must be a whole number")
        subject = _text(section, "subject", "Re: {subject}", 500, prefix=p)
        if any(c in subject for c in "\r\n"):
            raise InboxConfigError(f"{p}.subject: must not contain line breaks")
        return cls(
            subject=subject,
            text=_text(section, "text", None, 16 * 1024, prefix=p),
            max_per_sender_per_day=int(cap),
        )

    def subject_for(self, original: str | None) -> str:
        return self.subject.replace("{subject}", original or "your request")[:500]


@dataclass(frozen=True, slots=True)
class PreChatConfig:
    enabled: bool
    require_email: bool
    message: str

    @classmethod
    def of(cls, settings: dict[str, Any]) -> PreChatConfig:
        """The web chat's pre-chat form (disabled when the setting is absent)."""
        section = _section(settings, "pre_chat")
        p = "settings.pre_chat"
        if section is None:
            return cls(False, False, "")
        enabled = _flag(section, "enabled", True, prefix=p)
        require_email = _flag(section, "require_email", False, prefix=p)
        message = section.get("message", "")
        if not isinstance(message, str):
            raise InboxConfigError(f"{p}.message: must be a string")
        if len(message) > 1000:
            raise InboxConfigError(f"{p}.message: at most 1000 characters")
        return cls(enabled, require_email, message)

    def view(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "require_email": self.require_email,
            "message": self.message,
        }


MIN_IDENTITY_SECRET = 16


def identity_secret(credentials: dict[str, Any]) -> str | None:
    """The web chat's identity verification secret, if the inbox has one."""
    secret = credentials.get("identity_secret")
    if secret is None or secret == "":
        return None
    if not isinstance(secret, str) or len(secret) < MIN_IDENTITY_SECRET:
        raise InboxConfigError(
            f"credentials.identity_secret: a string of at least {MIN_IDENTITY_SECRET} characters"
        )
    return secret


def check_inbox(kind: str, settings: dict[str, Any], credentials: dict[str, Any]) -> None:
    """Raise ``InboxConfigError`` if the inbox's optional features are misconfigured."""
    if kind == "webchat":
        PreChatConfig.of(settings)
        identity_secret(credentials)
    elif settings.get("pre_chat") is not None:
        raise InboxConfigError("settings.pre_chat: only web chat inboxes have it")
    if kind != "email":
        for name in ("imap", "auto_reply"):
            if settings.get(name) is not None:
                raise InboxConfigError(f"settings.{name}: only email inboxes have it")
        return
    ImapConfig.of(settings, credentials)
    AutoReplyConfig.of(settings)
