"""The attachment store refuses programs by their bytes, whatever they are called."""

from __future__ import annotations

from pathlib import Path

import pytest

from contact_center.attachments import AttachmentRejected, AttachmentStore

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\xdac\xfc\xcf\xc0P\x0f\x00\x04\x85\x01\x80\x84\xa9\x8c!"
    b"\x00\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.mark.parametrize(
    "program",
    [
        b"\x7fELF\x02\x01\x01\x00" + bytes(56),  # Linux
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(50),  # Windows
        b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + bytes(24),  # macOS, 64 bit
        b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + bytes(24),  # universal binary / Java class
    ],
)
def test_programs_are_refused_under_any_name(tmp_path: Path, program: bytes) -> None:
    store = AttachmentStore(tmp_path, max_bytes=1024 * 1024)
    with pytest.raises(AttachmentRejected, match="programs are not accepted"):
        store.save(program, "holiday-photo.jpg", "image/jpeg")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_text_that_starts_like_a_program_header_is_not_a_program(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path, max_bytes=1024 * 1024)
    for text in (b"MZ-4410 order list: 3 boxes\n", b"#!/bin/sh\necho my install script\n"):
        stored = store.save(text, "notes.txt", "text/plain")
        assert store.path(stored.storage_key).read_bytes() == text


def test_an_image_is_stored_with_its_sniffed_type(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path, max_bytes=1024 * 1024)
    stored = store.save(PNG, "scan.bin", "application/octet-stream")
    assert stored.content_type == "image/png"
    assert store.path(stored.storage_key).read_bytes() == PNG
