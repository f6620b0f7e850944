"""Attachment files: content-addressed on disk, size-limited, content type checked.

Files are written before the database transaction that references them; writing is
idempotent (the name is the SHA-256), so a retried ingest stores each file once.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import puremagic

# Types a browser would run or a desktop would execute: never accepted from customers.
BLOCKED_TYPES = frozenset(
    {
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-dosexec",
        "application/x-executable",
        "application/x-elf",
        "application/x-sh",
        "application/x-bat",
        "application/java-archive",
        "application/vnd.microsoft.portable-executable",
    }
)
BLOCKED_EXTENSIONS = frozenset(
    {".exe", ".msi", ".bat", ".cmd", ".com", ".scr", ".js", ".vbs", ".jar", ".ps1", ".sh", ".dll"}
)
# Served inline only when the bytes are what the name says; everything else is a download.
INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "application/pdf",
        "text/plain",
        "audio/mpeg",
        "audio/ogg",
        "video/mp4",
    }
)
_SAFE_NAME = re.compile(r"[^\w.\- ()]+", re.UNICODE)
# Programs by their first bytes, whatever the name or declared type say (puremagic names
# no type for ELF and only application/octet-stream for a Windows executable): ELF, DOS/PE,
# Mach-O (both byte orders, 32/64 bit), universal binaries and Java classes. A DOS/PE header
# always holds NUL bytes, which no text starting with "MZ" does. Scripts are text a customer
# may well send to technical support (a download does not run them): refused by name only.
EXECUTABLE_MAGIC = (
    b"\x7fELF",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
)


def is_program(data: bytes) -> bool:
    if data.startswith(b"MZ"):
        return b"\x00" in data[:64]
    return data.startswith(EXECUTABLE_MAGIC)


class AttachmentRejected(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class StoredFile:
    filename: str
    content_type: str
    size: int
    sha256: str
    storage_key: str


def safe_filename(name: str | None, content_type: str) -> str:
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = _SAFE_NAME.sub("_", base).strip("._ ")[:200]
    if not base:
        base = "attachment" + (mimetypes.guess_extension(content_type) or ".bin")
    return base


def sniff(data: bytes) -> str | None:
    try:
        return str(puremagic.from_string(data[:8192], mime=True)) or None
    except (puremagic.PureError, ValueError):
        return None


def check_type(data: bytes, filename: str, declared: str | None) -> str:
    """The content type to record: the sniffed type wins over a declared one that disagrees."""
    declared = (declared or "").split(";")[0].strip().lower() or None
    ext = os.path.splitext(filename)[1].lower()
    if ext in BLOCKED_EXTENSIONS:
        raise AttachmentRejected(f"files of type {ext} are not accepted")
    if is_program(data):
        raise AttachmentRejected("programs are not accepted as attachments")
    sniffed = sniff(data)
    for candidate in (sniffed, declared):
        if candidate in BLOCKED_TYPES:
            raise AttachmentRejected(f"files of type {candidate} are not accepted")
    content_type = sniffed or declared or mimetypes.guess_type(filename)[0]
    return content_type or "application/octet-stream"


class AttachmentStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, storage_key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{64}", storage_key):
            raise ValueError("bad storage key")
        return self.root / storage_key

    def save(self, data: bytes, filename: str | None, declared_type: str | None) -> StoredFile:
        if len(data) > self.max_bytes:
            raise AttachmentRejected(
                f"attachment is {len(data)} bytes; the limit is {self.max_bytes}"
            )
        if not data:
            raise AttachmentRejected("attachment is empty")
        provisional = safe_filename(filename, declared_type or "application/octet-stream")
        content_type = check_type(data, provisional, declared_type)
        name = safe_filename(filename, content_type)
        digest = hashlib.sha256(data).hexdigest()
        key = f"{digest[:2]}/{digest}"
        target = self.path(key)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredFile(name, content_type, len(data), digest, key)
