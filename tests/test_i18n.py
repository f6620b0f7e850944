"""The console's Turkish catalogue covers every string the pages and their script show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent_ui import console, i18n

TEMPLATES = Path(console.__file__).parent / "templates"
PLACEHOLDER = re.compile(r"%\(\w+\)s|\{\w+\}")


def source_strings() -> list[str]:
    found: list[str] = []
    for template in sorted(TEMPLATES.glob("*.html")):
        for match in re.finditer(r"""_\((["'])(.+?)\1\)""", template.read_text()):
            found.append(match.group(2))
    return [
        *found,
        *i18n.JS_STRINGS.values(),
        *i18n.SUPERVISOR_STRINGS.values(),
        *console.MESSAGES,
    ]


def test_the_templates_use_the_catalogue() -> None:
    assert len(source_strings()) > 30


@pytest.mark.parametrize("text", sorted(set(source_strings())))
def test_every_string_has_a_turkish_translation(text: str) -> None:
    translated = i18n.translations("tr").gettext(text)
    assert translated != text, f"no Turkish for {text!r}"
    assert sorted(PLACEHOLDER.findall(translated)) == sorted(PLACEHOLDER.findall(text))


@pytest.mark.parametrize(
    ("preferred", "header", "expected"),
    [
        ("tr", None, "tr"),
        ("tr_TR", "en-US", "tr"),
        ("en", "tr-TR,tr;q=0.9", "en"),
        (None, "tr-TR,tr;q=0.9,en;q=0.8", "tr"),
        (None, "de-DE,de;q=0.9", "en"),
        ("xx", "garbage;;,", "en"),
        (None, None, "en"),
    ],
)
def test_the_language_is_the_agents_then_the_browsers(
    preferred: str | None, header: str | None, expected: str
) -> None:
    assert i18n.pick(preferred, header) == expected
