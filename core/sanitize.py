"""Making data from Mist safe for each place it is shown: terminals, chat markup, mail, HTML.

Names, summaries and descriptions come from the network (a site is named by whoever can edit it in
the Mist portal) and must be treated as hostile: they can hold terminal escape sequences, chat
markup (``<!channel>``, ``[link](https://...)``), line breaks and 100 KB of text. Every notifier and
every console output passes data through the helper of its channel:

- :func:`terminal` strips C0/C1 control characters (ESC sequences that clear the screen, set the
  window title, write the clipboard via OSC 52 or hide links via OSC 8) and caps the length;
- :func:`slack` escapes Slack mrkdwn (``&``, ``<``, ``>``: links and ``<!channel>`` mentions);
- :func:`markdown` escapes the Markdown that Teams Adaptive Cards render (``[text](url)``, ``**``);
- :func:`html` escapes HTML where a template does not already autoescape;
- :func:`header` makes one line of header text (no CR/LF, no controls, capped);
- :func:`cap` / :func:`cap_bytes` shorten with an ellipsis, for a channel's real size limits.

Caps are for display only: the full value stays in the data (store, webhook JSON, reports' data).
Part of the public API: third-party notifiers use it too.
"""

from __future__ import annotations

import html as _html
import re

ELLIPSIS = "…"

#: How long a name (site, device, rule summary) may be where people read it.
NAME_LIMIT = 120
#: How long a free text (description, recommendation) may be where people read it.
TEXT_LIMIT = 2000

# C0 controls except tab and newline, DEL, and the C1 range (0x9b is a one-byte CSI on some
# terminals). Bidi overrides (U+202A-U+202E, U+2066-U+2069) reorder what the reader sees.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Whole escape sequences go, not just their ESC: OSC (title, OSC 8 links, OSC 52 clipboard) up to its
# BEL/ST terminator, CSI with its parameters, and two-character escapes.
_SEQUENCES = re.compile(r"(?:\x1b\]|\x9d)[^\x07\x1b\x9c]{0,4096}(?:\x07|\x1b\\|\x9c)?"
                        r"|(?:\x1b\[|\x9b)[0-?]{0,64}[ -/]{0,16}[@-~]?|\x1b[@-_]?")
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x1c\x1d\x1e\u2028\u2029\x85]+")
# Emphasis, code, strike-through, headings, raw HTML and autolinks; a link needs "](" so escaping that
# "(" is enough ("[mistwatch]" stays readable). "." and "-" are left alone: they only matter at the
# start of a line, and names like "ap-01" or "10.0.0.1" must stay readable in clients that show
# the backslashes (as old Teams mobile apps did).
_MARKDOWN = re.compile(r"([\\`*_#<>~|]|(?<=\])\()")


def cap(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``limit`` characters, ending with ``ellipsis`` when it was cut."""
    text = str(text)
    if len(text) <= limit:
        return text
    if limit <= len(ellipsis):
        return ellipsis[:limit]
    return text[: limit - len(ellipsis)] + ellipsis


def cap_bytes(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (never inside a character), with ``ellipsis``."""
    data = str(text).encode("utf-8")
    if len(data) <= limit:
        return str(text)
    room = max(limit - len(ellipsis.encode("utf-8")), 0)
    return data[:room].decode("utf-8", "ignore") + ellipsis


def strip_controls(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` without escape sequences and control characters (ESC, BEL, CSI ...); line breaks
    (all that str.splitlines() breaks on) and tabs become spaces unless ``keep_newlines`` (then
    ``\\r\\n`` and ``\\r`` become ``\\n``)."""
    text = _SEQUENCES.sub("", str(text))
    if keep_newlines:
        return _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _CONTROLS.sub("", _LINE_BREAKS.sub(" ", text))


def one_line(text: str, limit: int = NAME_LIMIT) -> str:
    """One line of plain text for a header, a title or a table cell: every control character or line
    break folded to a space (so "Lab\\x0bAnnex" reads "Lab Annex" and no escape sequence survives:
    its ESC is gone, the rest is plain text), capped."""
    return cap(_CONTROLS.sub(" ", _LINE_BREAKS.sub(" ", str(text))).strip(), limit)


def terminal(text: str, limit: int | None = NAME_LIMIT, *, keep_newlines: bool = False) -> str:
    """Text safe to print on a terminal: no control characters, capped at ``limit`` characters."""
    clean = strip_controls(text, keep_newlines=keep_newlines)
    return clean if limit is None else cap(clean, limit)


def header(text: str, limit: int = 200) -> str:
    """Header text (a mail Subject, a chat title): one line, no controls, capped."""
    return one_line(text, limit)


def slack(text: str) -> str:
    """Slack mrkdwn: ``&``, ``<`` and ``>`` escaped, so data cannot make links or ``<!channel>``
    mentions (Slack's own escaping rule), and controls removed."""
    return strip_controls(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown(text: str) -> str:
    """Markdown as Teams renders it: every markup character backslash-escaped, so ``[x](https://y)``
    and ``**x**`` stay text; controls removed."""
    return _MARKDOWN.sub(r"\\\1", strip_controls(text))


def html(text: str) -> str:
    """HTML-escaped text (``&<>"'``), for HTML built without an autoescaping template."""
    return _html.escape(strip_controls(text), quote=True)
