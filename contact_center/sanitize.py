"""Inbound HTML is cleaned before it is stored (nh3); templates escape on the way out."""

from __future__ import annotations

import html as html_lib
import re

import nh3

_ALLOWED_TAGS = set(nh3.ALLOWED_TAGS) | {
    "span",
    "div",
    "p",
    "br",
    "img",
    "table",
    "thead",
    "tbody",
    "tr",
    "td",
    "th",
    "hr",
    "pre",
    "code",
}
_ALLOWED_ATTRIBUTES = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
}
_BLOCK = re.compile(r"</(p|div|tr|li|h[1-6]|blockquote)>|<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")


def clean_html(raw: str) -> str:
    """Remove scripts, event handlers, ``javascript:`` URLs and remote-tracking-free markup."""
    return nh3.clean(
        raw,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto", "tel", "cid"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def html_to_text(raw: str) -> str:
    """A readable plain-text rendering of an HTML body (for search, previews and SMS)."""
    with_breaks = _BLOCK.sub(lambda m: m.group(0) + "\n", raw)
    stripped = nh3.clean(with_breaks, tags=set(), clean_content_tags={"script", "style", "head"})
    text = html_lib.unescape(stripped)
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()
