"""Open documents and LSP position conversion.

LSP positions are (line, character) where lines end at "\\n", "\\r\\n" or "\\r"
and `character` counts code units of the negotiated encoding (UTF-16 by
default). Python strings index code points, so every position is converted
here. pygls' own TextDocument splits lines with str.splitlines(), which also
breaks at form feeds, "\\x1c".."\\x1e", U+0085, U+2028 and U+2029, and clamps
a too-large character to one before the end of an unterminated last line;
both shift positions in real files, hence this small module.
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

LINE_BREAK = re.compile(r"\r\n|\r|\n")
ENCODINGS = ("utf-8", "utf-16", "utf-32")


def line_starts(text: str) -> list[int]:
    """Offset (in code points) at which each line starts; always at least [0]."""
    return [0] + [m.end() for m in LINE_BREAK.finditer(text)]


def _units(char: str, encoding: str) -> int:
    code = ord(char)
    if encoding == "utf-16":
        return 2 if code > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 1


def count_units(text: str, encoding: str) -> int:
    """Length of text in code units of encoding (lone surrogates count as one UTF-16 unit)."""
    if encoding == "utf-32" or text.isascii():
        return len(text)
    return sum(_units(c, encoding) for c in text)


def line_end(text: str, starts: list[int], line: int) -> int:
    """Offset of the end of line `line`, before its line break."""
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    if end > starts[line] and text[end - 1] == "\n":
        end -= 1
    if end > starts[line] and text[end - 1] == "\r":
        end -= 1
    return end


def offset_at(text: str, starts: list[int], line: int, character: int, encoding: str) -> int:
    """Code point offset of an LSP position; positions past a line's end or the
    document's end are clamped to it, as the LSP specification asks."""
    if line < 0 or character < 0:
        raise ValueError(f"negative position {line}:{character}")
    if line >= len(starts):
        return len(text)
    start, end = starts[line], line_end(text, starts, line)
    if encoding == "utf-32" or text[start:end].isascii():
        return min(start + character, end)
    units, offset = 0, start
    while offset < end:
        units += _units(text[offset], encoding)
        if units > character:  # the position falls inside this character: stay before it
            break
        offset += 1
    return offset


def position_at(text: str, starts: list[int], offset: int, encoding: str) -> tuple[int, int]:
    """LSP (line, character) of a code point offset."""
    offset = max(0, min(offset, len(text)))
    line = bisect.bisect_right(starts, offset) - 1
    return line, count_units(text[starts[line] : offset], encoding)


@dataclass
class Document:
    uri: str
    text: str
    version: int = 0
    language_id: str = ""
    _starts: list[int] | None = field(default=None, repr=False)

    @property
    def starts(self) -> list[int]:
        if self._starts is None:
            self._starts = line_starts(self.text)
        return self._starts

    def offset_at(self, line: int, character: int, encoding: str) -> int:
        return offset_at(self.text, self.starts, line, character, encoding)

    def position_at(self, offset: int, encoding: str) -> tuple[int, int]:
        return position_at(self.text, self.starts, offset, encoding)

    def replace(self, start: int, end: int, new_text: str) -> None:
        self.text = self.text[:start] + new_text + self.text[end:]
        self._starts = None


class DocumentStore:
    """The text of every open document, kept in sync by didOpen/didChange/didClose."""

    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}

    def get(self, uri: str) -> Document | None:
        return self.documents.get(uri)

    def open(self, uri: str, text: str, version: int, language_id: str) -> Document:
        self.documents[uri] = Document(uri, text, version, language_id)
        return self.documents[uri]

    def close(self, uri: str) -> None:
        self.documents.pop(uri, None)

    def change(self, uri: str, version: int, changes: list, encoding: str) -> bool:
        """Apply content changes (full or ranged, in order); False if the document is unknown
        or a change had an impossible range (that change is skipped and logged)."""
        document = self.documents.get(uri)
        if document is None:
            log.warning("change for a document that is not open: %s", uri)
            return False
        ok = True
        for change in changes:
            rng = getattr(change, "range", None)
            if rng is None:
                document.replace(0, len(document.text), change.text)
                continue
            try:
                start = document.offset_at(rng.start.line, rng.start.character, encoding)
                end = document.offset_at(rng.end.line, rng.end.character, encoding)
            except ValueError as exc:
                start, end = 1, 0
                log.warning("%s: %s", uri, exc)
            if end < start:
                log.warning("skipping an edit whose range ends before it starts in %s: %s", uri, rng)
                ok = False
                continue
            document.replace(start, end, change.text)
        document.version = version
        return ok
