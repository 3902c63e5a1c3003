"""Readable text from an HTML-only email, converted off the event loop, bounded in time and size.

html2text is pure Python and can take minutes on hostile markup (180 KB of nested `<ul><li>`
took over 30 seconds and produced 100 MB of indentation; 4 KB of it takes 60 ms), and a
thread could neither be stopped nor keep it from holding the GIL. So it runs in a child
Python process (`_CHILD`, reading HTML on stdin, writing text on stdout) that is killed at
the deadline; at most MAX_CONVERSIONS run at once, and waiting for a turn counts against the
same deadline. Markup past `max_input` characters is cut before conversion, the text past
`max_text` after it, and when the child fails or runs out of time a linear tag stripper gives
the text instead: the email is never lost for its HTML.
"""

from __future__ import annotations

import asyncio
import html
import re
import sys
import weakref
from dataclasses import dataclass, field

MAX_CONVERSIONS = 2
_conversions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()

_INVISIBLE = re.compile(r"<(script|style|head)\b", re.IGNORECASE)
_BREAKS = re.compile(r"<(?:br|/p|/div|/li|/tr|/h[1-6])\b[^>]*>", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]*>")
_BLANK_RUNS = re.compile(r"[ \t\r\f\v]+")
_LINE_RUNS = re.compile(r"\n\s*\n+")


@dataclass
class Converted:
    text: str
    notes: list[str] = field(default_factory=list)  # what was cut or replaced, for the repair row


# The child: html2text's reading (links kept, images dropped, no hard wrapping: the model reads
# paragraphs), at most `limit` + 1 characters written back (one past the limit says it was cut).
# Only html2text is imported, so a conversion starts in about a tenth of a second.
_CHILD = """
import sys, html2text
converter = html2text.HTML2Text()
converter.ignore_images = True
converter.body_width = 0
limit = int(sys.argv[1])
text = converter.handle(sys.stdin.buffer.read().decode("utf-8", "replace")).strip()
sys.stdout.buffer.write(text[: limit + 1].encode("utf-8", "replace"))
"""


def _without_invisible(markup: str) -> str:
    """The markup without script, style and head blocks, in one pass (an unclosed block
    runs to the end)."""
    kept, at, lower = [], 0, markup.lower()
    while (found := _INVISIBLE.search(markup, at)) is not None:
        kept.append(markup[at : found.start()])
        end = lower.find(f"</{found.group(1).lower()}", found.end())
        close = markup.find(">", end) if end >= 0 else -1
        at = len(markup) if close < 0 else close + 1
    kept.append(markup[at:])
    return " ".join(kept)


def strip_tags(markup: str) -> str:
    """Text by deleting tags (linear time): the fallback when html2text cannot finish."""
    text = _without_invisible(markup)
    text = _TAGS.sub("", _BREAKS.sub("\n", text))
    text = _BLANK_RUNS.sub(" ", html.unescape(text))
    return _LINE_RUNS.sub("\n\n", "\n".join(line.strip() for line in text.split("\n"))).strip()


async def _in_child(markup: str, seconds: float, max_text: int) -> str:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",  # isolated: no PYTHON* variables, no user site, not the working directory
        "-c",
        _CHILD,
        str(max_text),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(child.communicate(markup.encode("utf-8", "replace")), seconds)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"html2text exited with {child.returncode}")
    return out.decode("utf-8", "replace")


async def html_to_text(markup: str, *, seconds: float, max_input: int, max_text: int) -> Converted:
    """The email's HTML as text, never taking longer than about `seconds`."""
    notes = []
    if len(markup) > max_input:
        notes.append(f"HtmlBody: converted the first {max_input} of {len(markup)} characters")
        markup = markup[:max_input]
    loop = asyncio.get_running_loop()
    slots = _conversions.setdefault(loop, asyncio.Semaphore(MAX_CONVERSIONS))
    deadline = loop.time() + seconds  # waiting for a free slot counts too
    try:
        async with asyncio.timeout_at(deadline):
            await slots.acquire()
        try:
            text = await _in_child(markup, max(deadline - loop.time(), 0.01), max_text)
        finally:
            slots.release()
    except (TimeoutError, RuntimeError, OSError) as error:
        why = "ran out of time" if isinstance(error, TimeoutError) else "failed"
        notes.append(f"HtmlBody: html2text {why} after at most {seconds:g} s, so tags were stripped instead")
        text = await asyncio.to_thread(strip_tags, markup)
    if len(text) > max_text:
        notes.append(f"HtmlBody: kept the first {max_text} of {len(text)} characters of its text")
        text = text[:max_text].rstrip()
    return Converted(text=text, notes=notes)
