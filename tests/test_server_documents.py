"""Position conversion and incremental edits (no server)."""

import pytest
from lsprotocol import types

from lsp_server.documents import Document, DocumentStore, count_units

TEXT = "a = '😀x'\r\nb = 1\rc\n\x0cd = 'é'\u2028e\nlast"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8", "utf-32"])
def test_round_trip_every_offset(encoding):
    doc = Document("file:///t.py", TEXT)
    for offset in range(len(TEXT) + 1):
        line, character = doc.position_at(offset, encoding)
        if 0 < offset and TEXT[offset - 1] == "\r" and offset < len(TEXT) and TEXT[offset] == "\n":
            continue  # between \r and \n: not a position a client can name
        assert doc.offset_at(line, character, encoding) == offset


def test_lines_break_only_at_lsp_line_breaks():
    doc = Document("file:///t.py", TEXT)
    # \x0c and \u2028 are not line breaks in LSP: "d = 'é'\u2028e" is one line.
    assert doc.offset_at(3, 0, "utf-16") == TEXT.index("\x0cd")
    assert doc.offset_at(4, 0, "utf-16") == TEXT.index("last")


def test_emoji_units():
    doc = Document("file:///t.py", TEXT)
    x = TEXT.index("x")
    assert doc.position_at(x, "utf-16") == (0, 7)  # the emoji is two UTF-16 units
    assert doc.position_at(x, "utf-8") == (0, 9)  # and four UTF-8 bytes
    assert doc.position_at(x, "utf-32") == (0, 6)
    assert doc.offset_at(0, 6, "utf-16") == x - 1  # inside the pair: before the emoji
    assert count_units("😀é", "utf-16") == 3 and count_units("😀é", "utf-8") == 6


def test_positions_past_the_end_are_clamped():
    doc = Document("file:///t.py", TEXT)
    assert doc.offset_at(0, 999, "utf-16") == TEXT.index("\r\n")  # end of line, before CRLF
    assert doc.offset_at(5, 999, "utf-16") == len(TEXT)  # unterminated last line
    assert doc.offset_at(99, 0, "utf-16") == len(TEXT)
    with pytest.raises(ValueError):
        doc.offset_at(-1, 0, "utf-16")


def _change(l1, c1, l2, c2, text):
    rng = types.Range(start=types.Position(line=l1, character=c1), end=types.Position(line=l2, character=c2))
    return types.TextDocumentContentChangePartial(range=rng, text=text)


def test_incremental_edits_on_an_emoji_line():
    store = DocumentStore()
    store.open("u", "s = '😀'\r\nt = 2\r\n", 1, "python")
    assert store.change("u", 2, [_change(0, 8, 0, 8, "!"), _change(1, 4, 1, 5, "3")], "utf-16")
    assert store.get("u").text == "s = '😀'!\r\nt = 3\r\n"
    assert store.change("u", 3, [types.TextDocumentContentChangeWholeDocument(text="new")], "utf-16")
    assert store.get("u").text == "new" and store.get("u").version == 3


def test_impossible_edits_are_skipped():
    store = DocumentStore()
    store.open("u", "abc\ndef", 1, "")
    assert not store.change("u", 2, [_change(1, 2, 0, 1, "X")], "utf-16")  # ends before it starts
    assert store.get("u").text == "abc\ndef"
    assert store.change("u", 3, [_change(7, 0, 9, 9, "!")], "utf-16")  # past the end: appended
    assert store.get("u").text == "abc\ndef!"
    assert not store.change("nope", 1, [_change(0, 0, 0, 0, "x")], "utf-16")


def test_pygls_documents_still_split_lines_differently():
    """Why lsp_server/server.py's Protocol replaces pygls' didOpen/didChange/didClose with our
    store: pygls' TextDocument breaks lines at a form feed, which LSP does not. When this fails,
    pygls agrees with LSP and its workspace documents could serve instead."""
    from pygls.workspace import TextDocument

    assert len(TextDocument("file:///x.py", "a\x0cb\n").lines) == 2  # LSP: one line
