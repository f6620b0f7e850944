"""Keep the new text of an email reply apart from the quoted history.

Rules, in the order they are tried on each line of the plain-text part:

* a hard marker ends the new text, and everything from it on is history: an Outlook-style
  header block (``From:``/``Kimden:`` followed by at least two of ``Sent:``, ``Date:``,
  ``To:``, ``Subject:``, ``Gönderildi:``, ``Tarih:``, ``Kime:``, ``Konu:``..., with the
  ``____`` rule above it), a separator line (``-----Original Message-----``,
  ``-------- Original message --------``, ``---------- Forwarded message ---------``,
  ``Orijinal mesaj``...), ``Begin forwarded message:``;
* an attribution line (``On <date>, <name> wrote:``, wrapped over up to three lines; Turkish
  ``... tarihinde ... şunu yazdı:`` and ``Şu tarihte ... yazdı:``; a few other languages) or
  a ``>`` line starts a quote. If the lines after it are ``>``-quoted and the customer wrote
  below them, the mail is bottom-posted (new text = above + below the quote) or answered inline
  (new text keeps the quoted questions up to the customer's last line: answers mean nothing
  without them; only the quote after it is history).

HTML is used when there is no text part, or when the text part has no quote we recognise:
it is rendered to text with blockquotes and the clients' quote containers (``gmail_quote``,
``yahoo_quoted``, ``moz-cite-prefix``, ``blockquote type=cite``) as ``>`` lines, and Outlook's
``divRplyFwdMsg``/``appendonsend``/border-top separator as a hard marker; then the same rules
apply.

Signatures stay in the new text: a ``-- `` block, "Sent from my iPhone", "Get Outlook for
Android" are what the customer's client sent with this message, often carry a phone number an
agent needs, and only the quote below them is cut (as Zendesk and Chatwoot keep the body above
the quote). A mail that is all quote (a forward without a comment, possibly under a mobile
signature) keeps its full text: content is never dropped.
"""  # noqa: RUF002 (Turkish words)

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

__all__ = ["ReplyParts", "split_html", "split_reply", "split_text", "unflow"]


@dataclass(frozen=True, slots=True)
class ReplyParts:
    text: str  # what the customer wrote now
    quoted: str | None  # the history under it; None when there is none (or it is all history)


MAX_HTML = 2_000_000

# A line the HTML renderer puts where Outlook's reply header starts; never in decoded text.
_CUT = "\x00cut\x00"

# "On <date>, <name> wrote:" and its translations, judged by plain string tests (no regex
# backtracking over what a stranger sends): a line that ends like an attribution...
_ATTRIBUTION_END = re.compile(
    r"(wrote|a écrit|escribió|ha scritto|schreef|escreveu|yazdı)\s*:$", re.IGNORECASE
)
# ...and starts like one ("Am ... schrieb <name>:" ends with the name, so it has its own test).
_ATTRIBUTION_START = ("on ", "le ", "el ", "il ", "op ", "em ")
_MAX_ATTRIBUTION = 500
_FROM = re.compile(r"^\*?(from|kimden|gönderen|von|de|van)\s*:\*?\s*\S", re.IGNORECASE)
_HEADER = re.compile(
    r"^\*?(sent|date|to|cc|subject|gönderildi|gönderilme tarihi|tarih|kime|alıcı|bilgi|konu|"
    r"gesendet|datum|an|betreff|envoyé|à|objet|enviado|para|asunto)\s*:",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(
    r"^-{2,}\s*(original message|orijinal mesaj|orijinal ileti|özgün ileti|forwarded message|"
    r"iletilen ileti|iletilmiş ileti|yönlendirilen ileti|yönlendirilmiş ileti|"
    r"ursprüngliche nachricht|message d'origine|mensaje original)\s*-{2,}$",
    re.IGNORECASE,
)
_FORWARD_START = re.compile(
    r"^(begin forwarded message|iletilen ileti başlangıcı|yönlendirilmiş ileti başlangıcı)\s*:$",
    re.IGNORECASE,
)
# Longer lines are text, never an attribution or a header (and are never searched).
_MAX_HEADER_LINE = 1000
_RULE = re.compile(r"^_{10,}$")
# An unknown client's attribution right above a ">" block: ends with ":" and names an
# address or a time.
_LOOSE_ATTRIBUTION = re.compile(r"^.{5,300}(@|\b\d{1,2}[:.]\d{2}\b).{0,200}:$")
# Lines a mobile client adds on its own; a mail with only these above a quote is all quote.
_BOILERPLATE = re.compile(
    r"^(sent from my .{1,60}|sent from (yahoo )?mail.{0,60}|sent from outlook.{0,60}|"
    r"get outlook for .{1,80}|sent via .{1,60}|iphone'umdan gönderildi|ipad'imden gönderildi|"
    r".{0,60}(cihazımdan|telefonumdan) gönderildi\.?|android için outlook'?u edinin.{0,80})$",
    re.IGNORECASE,
)


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _header_block(lines: list[str], i: int) -> bool:
    if not _FROM.match(lines[i].strip()):
        return False
    following = [ln.strip() for ln in lines[i + 1 : i + 6] if ln.strip()][:4]
    return sum(1 for ln in following if _HEADER.match(ln)) >= 2


def _is_attribution(text: str) -> bool:
    low = text.lower()
    if len(text) > _MAX_ATTRIBUTION or not low.endswith(":") or not any(c.isdigit() for c in low):
        return False
    if low.startswith("am ") and " schrieb " in low:
        return True
    if not _ATTRIBUTION_END.search(low):
        return False
    if low.endswith(("yazdı:", "yazdı :")):
        return " tarihinde " in f" {low}" or low.startswith("şu tarihte ")
    return low.startswith(_ATTRIBUTION_START)


def _attribution(lines: list[str], i: int) -> int:
    """The first line of an attribution ending at line ``i`` (wrapped over at most three
    lines: the shortest that matches), or -1."""
    last = lines[i].strip()
    if len(last) > _MAX_ATTRIBUTION or not last.endswith(":"):
        return -1
    for n in (1, 2, 3):
        if i - n + 1 < 0:
            return -1
        chunk = [ln.strip() for ln in lines[i - n + 1 : i + 1]]
        if not all(chunk):
            return -1
        if _is_attribution(" ".join(chunk)):
            return i - n + 1
    return -1


def _next_nonblank(lines: list[str], i: int) -> int | None:
    for j in range(i, len(lines)):
        if lines[j].strip():
            return j
    return None


def _find_quote(lines: list[str]) -> tuple[int, int, bool] | None:
    """(first line of the quote, first line after its attribution, hard) or None."""
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        if len(line) > _MAX_HEADER_LINE:
            if _is_quoted(raw):
                return i, i, False
            continue
        if raw == _CUT or (
            len(line) <= _MAX_ATTRIBUTION and (_SEPARATOR.match(line) or _FORWARD_START.match(line))
        ):
            return i, i + 1, True
        if _RULE.match(line):
            j = _next_nonblank(lines, i + 1)
            if j is not None and (_header_block(lines, j) or lines[j] == _CUT):
                return i, i + 1, True
        if _header_block(lines, i):
            return i, i + 1, True
        first = _attribution(lines, i)
        if first >= 0:
            return first, i + 1, False
        if _is_quoted(raw):
            prev = i - 1
            while prev >= 0 and not lines[prev].strip():
                prev -= 1
            if prev >= 0 and _LOOSE_ATTRIBUTION.match(lines[prev].strip()):
                return prev, i, False
            return i, i, False
    return None


def _split_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    found = _find_quote(lines)
    if found is None:
        return lines, []
    start, body, hard = found
    first = _next_nonblank(lines, body)
    if hard or first is None or not _is_quoted(lines[first]):
        # Outlook-style headers, separators, and attributions over unquoted history (Yahoo).
        return lines[:start], lines[start:]
    own = [k for k in range(body, len(lines)) if lines[k].strip() and not _is_quoted(lines[k])]
    if not own:
        return lines[:start], lines[start:]
    if not any(_is_quoted(lines[k]) for k in range(own[0], len(lines))):
        # Bottom-posted: the customer wrote under one quote.
        return lines[:start] + lines[own[0] :], lines[start : own[0]]
    # Answered inline: keep the quoted questions up to the last answer.
    last = own[-1] + 1
    return lines[:last], lines[last:]


def _join(lines: list[str]) -> str:
    """The lines as the customer sent them, without blank lines around them."""
    return "\n".join(line for line in lines if line != _CUT).strip("\n").rstrip()


def _only_boilerplate(text: str) -> bool:
    return all(_BOILERPLATE.match(ln.strip()) for ln in text.splitlines() if ln.strip())


def _split(lines: list[str], whole: list[str] | None = None) -> ReplyParts:
    """``whole``: the full text to keep when nothing or everything is quote (default: the
    lines themselves)."""
    new, quoted = _split_lines(lines)
    text, history = _join(new), _join(quoted)
    if not history or not text.strip() or _only_boilerplate(text):
        # No quote, or all quote (a forward without a comment): keep everything as the text.
        return ReplyParts(_join(lines if whole is None else whole), None)
    return ReplyParts(text, history)


def split_text(text: str) -> ReplyParts:
    """Split a plain-text body into the new text and the quoted history."""
    return _split(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def split_html(html: str) -> ReplyParts:
    """Split an HTML body (rendered to text) into the new text and the quoted history."""
    renderer = _Renderer()
    renderer.feed(html)
    renderer.close()
    marked, plain = renderer.finish()
    return _split(marked, plain)


def split_reply(text: str | None, html: str | None) -> ReplyParts:
    """The new text and the history of a mail from its text part and/or HTML part. The text
    part decides when it has a quote we recognise; else the HTML's structure may. HTML over
    ``MAX_HTML`` is not split (its full text is kept): parsing it would stall the caller."""
    if html is not None and len(html) > MAX_HTML:
        html = None
    if text and text.strip():
        parts = split_text(text)
        if parts.quoted is None and html:
            from_html = split_html(html)
            if from_html.quoted is not None:
                return from_html
        return parts
    if html:
        return split_html(html)
    return ReplyParts("", None)


def unflow(text: str, delsp: bool = False) -> str:
    """Decode ``format=flowed`` (RFC 3676): join soft-broken lines, keep quote depth."""
    out: list[str] = []
    buf: str | None = None
    buf_depth = 0

    def emit(line: str, depth: int) -> None:
        out.append((">" * depth + " " + line) if depth else line)

    for raw in text.replace("\r\n", "\n").split("\n"):
        depth = len(raw) - len(raw.lstrip(">"))
        line = raw[depth:]
        if line.startswith(" "):
            line = line[1:]  # space-stuffing
        if buf is not None and depth != buf_depth:
            emit(buf, buf_depth)
            buf = None
        flowed = line.endswith(" ") and line != "-- "
        if flowed and delsp:
            line = line[:-1]
        if buf is None:
            buf, buf_depth = line, depth
        else:
            buf += line
        if not flowed:
            emit(buf, buf_depth)
            buf = None
    if buf is not None:
        emit(buf, buf_depth)
    return "\n".join(out)


_BLOCK_TAGS = {
    "address", "article", "blockquote", "dd", "div", "dl", "dt", "footer", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section", "table", "tr", "ul",
}  # fmt: skip
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source"}
_SKIP_TAGS = {"script", "style", "head", "title"}
_QUOTE_CLASSES = {"gmail_quote", "gmail_quote_container", "yahoo_quoted", "moz-cite-prefix"}
_CUT_IDS = {"divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container"}
_WS = re.compile(r"[ \t\r\n\f]+")


class _Renderer(HTMLParser):
    """HTML to lines: quote containers become ``>`` lines, Outlook's reply header a cut."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[int, str]] = []  # (quote depth, text)
        self.current: list[str] = []
        # (tag, is a quote container, a blank line after it: a <p> that is not Outlook's)
        self.stack: list[tuple[str, bool, bool]] = []
        self.depth = 0
        self.skip = 0
        self.pre = 0
        self.cut = False

    def _flush(self, force: bool = False) -> None:
        if self.current or force:
            line = "".join(self.current).replace("\xa0", " ")
            line = _WS.sub(" ", line).strip() if not self.pre else line.rstrip()
            self.lines.append((self.depth, line))
        self.current = []

    def _is_quote(self, tag: str, attrs: dict[str, str]) -> bool:
        if tag == "blockquote":
            return True
        return tag == "div" and bool(_QUOTE_CLASSES & set(attrs.get("class", "").split()))

    def _is_cut(self, tag: str, attrs: dict[str, str]) -> bool:
        if attrs.get("id", "").lower() in _CUT_IDS:
            return True
        if tag == "hr" and attrs.get("id", "").lower() == "stopspelling":
            return True
        style = attrs.get("style", "").replace(" ", "").lower()
        return tag == "div" and "border-top:solid" in style and "padding:3" in style

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        amap = {k.lower(): v or "" for k, v in attrs}
        if tag in _SKIP_TAGS:
            self.skip += 1
            return
        if not self.cut and self._is_cut(tag, amap):
            self._flush()
            self.lines.append((0, _CUT))
            self.cut = True
        if tag == "br":
            self._flush(force=True)
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag in _VOID_TAGS:
            return
        quote = self._is_quote(tag, amap)
        if quote:
            self.depth += 1
        if tag == "pre":
            self.pre += 1
        blank_after = tag == "p" and "msonormal" not in amap.get("class", "").lower()
        self.stack.append((tag, quote, blank_after))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
            return
        if tag in _VOID_TAGS or not any(entry[0] == tag for entry in self.stack):
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        while self.stack:
            open_tag, quote, blank_after = self.stack.pop()
            if blank_after:
                self._flush()
                self.lines.append((self.depth, ""))
            if quote:
                self._flush()
                self.depth -= 1
            if open_tag == "pre":
                self.pre = max(0, self.pre - 1)
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            first, *rest = data.split("\n")
            self.current.append(first)
            for piece in rest:
                self._flush(force=True)
                self.current.append(piece)
            return
        if not self.current and not data.strip(" \t\r\n\f"):
            return
        self.current.append(data)

    def finish(self) -> tuple[list[str], list[str]]:
        """The lines with quotes marked by ``>``, and the same lines unmarked."""
        self._flush()
        marked: list[str] = []
        plain: list[str] = []
        previous: tuple[int, str] | None = None
        for depth, text in self.lines:
            line = text.rstrip()
            if not line and previous == (depth, ""):
                continue  # one blank line where markup stacked several
            previous = (depth, line)
            marked.append(("> " * depth + line).rstrip() if depth else line)
            plain.append(line)
        return marked, plain
