"""Make raw model output fit the cursor: one line or a block, stop rules per
language, no repeating of what the text after the cursor already holds or of
the suggestion's own lines, and (Python) whole lines that leave the code valid.

Plain functions of plain strings, so each rule is unit-tested on hand-written
cases.
"""

from __future__ import annotations

import ast
import re
import warnings

from lsp_server import syntax

CLOSERS = ")]}\"'`>;,"
# A new top-level statement ends a Python suggestion: it belongs to the next block.
PYTHON_STOPS = ("\ndef ", "\nclass ", "\nasync def ", "\nif __name__", "\n@")
# Other languages: two blank lines end a block of code as well as anything does.
GENERIC_STOPS = ("\n\n\n",)
EXTENSIONS = {".py": "python", ".pyi": "python", ".pyw": "python", **syntax.EXTENSIONS}


def language_of(language_id: str, uri: str) -> str:
    """The editor's languageId, or a guess from the file name."""
    if language_id:
        return syntax.canonical(language_id)
    for ext, language in EXTENSIONS.items():
        if uri.lower().endswith(ext):
            return language
    return ""


def current_line(prefix: str, suffix: str) -> tuple[str, str]:
    """The cursor line's text before and after the cursor (without its line break)."""
    # Searches from the cursor outwards: the line is found without reading the rest of the file.
    before = prefix[max(prefix.rfind("\n"), prefix.rfind("\r")) + 1 :]
    ends = [i for i in (suffix.find("\n"), suffix.find("\r")) if i >= 0]
    after = suffix[: min(ends)] if ends else suffix
    return before, after


def opens_block(line: str, language: str) -> bool:
    code = line.rstrip()
    if language == "python":
        code = re.sub(r"#.*$", "", code).rstrip()  # rough: '#' inside a string is rare here
        return code.endswith(":")
    if language == "lua" and re.search(r"(\bthen|\bdo|\brepeat|\bfunction\b.*\))$", code):
        return True
    return code.endswith(("{", "(", "[", "=>", ":"))


def wants_multiline(prefix: str, suffix: str, language: str, mode: str) -> bool:
    """auto: a block when the cursor ends a line that opens one, or sits on an empty line."""
    if mode in ("always", "never"):
        return mode == "always"
    before, after = current_line(prefix, suffix)
    if after.strip():
        return False
    return not before.strip() or opens_block(before, language)


def stop_sequences(language: str, multiline: bool) -> tuple[str, ...]:
    if not multiline:
        return ("\n",)
    return PYTHON_STOPS if language == "python" else GENERIC_STOPS + syntax.TOP_LEVEL.get(syntax.family(language), ())


def indent_width(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def cut_at_dedent(text: str, prefix: str, suffix: str, language: str) -> str:
    """Keep the suggestion inside the cursor's block.

    The first line continues the cursor line. Later lines must be indented
    deeper than a line that opens a block, or at least as deep as the cursor
    line otherwise; the first line that is not ends the suggestion. Outside
    Python a closing bracket at the block's own indentation is kept (it closes
    the block) and ends it.
    """
    before, _ = current_line(prefix, suffix)
    lines = text.split("\n")
    first = before + lines[0]
    base = indent_width(first) if first.strip() else indent_width(before)
    block = opens_block(first, language)
    for i in range(1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        width = indent_width(line)
        inside = width > base if block else width >= base
        if inside:
            continue
        if language != "python" and width == base and (line.strip()[0] in ")]}" or closes_lua(line, language)):
            return "\n".join(lines[: i + 1])
        return "\n".join(lines[:i])
    return text


def closes_lua(line: str, language: str) -> bool:
    return language == "lua" and re.match(r"(end|until)\b", line.strip()) is not None


def trim_repeated_lines(text: str, suffix: str) -> str:
    """Cut the suggestion where it starts repeating the lines below the cursor."""
    following = [line.rstrip() for line in re.split(r"\r\n|\r|\n", suffix)[1:]]
    following = [line for line in following if line.strip()]
    if not following:
        return text
    lines = text.split("\n")
    for i in range(1, len(lines)):
        if lines[i].rstrip() == following[0]:
            return "\n".join(lines[:i])
    return text


def trim_own_repeats(text: str) -> str:
    """Cut a block before its first line that repeats an earlier one, indentation
    and all: greedy decoding of a small model falls into such loops."""
    lines = text.split("\n")
    seen = set()
    for i, line in enumerate(lines):
        if line.strip() and line.rstrip() in seen:
            return "\n".join(lines[:i])
        seen.add(line.rstrip())
    return text


def parses(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes and the like are not our business
        try:
            ast.parse(source)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return False
    return True


def keep_what_parses(text: str, prefix: str, suffix: str) -> str:
    """Python: the most whole lines of a block that leave the text around them valid.

    A block that rambles on (an unclosed bracket, a half-written last line)
    is cut back to where the file parses again. If no cut parses, the block is
    dropped when the file parses without it (it could only break valid code),
    and kept otherwise (the code around the cursor is itself mid-edit, or cut
    by the context window: parsing cannot judge it).
    """
    lines = text.split("\n")
    for n in range(len(lines), 0, -1):
        block = "\n".join(lines[:n])
        if parses(prefix + block + suffix):
            return block
    return "" if parses(prefix + suffix) else text


def trim_closers(text: str, suffix: str) -> str:
    """Drop closing brackets and quotes at the end of the suggestion that the cursor
    line already has right after the cursor: `foo(|)` + `a, b)` gives `a, b`."""
    _, after = current_line("", suffix)
    head = after.lstrip(" ")
    closers = ""
    for char in head:
        if char not in CLOSERS:
            break
        closers += char
    end = text.rstrip(" ")
    for k in range(len(closers), 0, -1):
        if end.endswith(closers[:k]):
            return end[: len(end) - k]
    return text


def postprocess(text: str, prefix: str, suffix: str, language: str, multiline: bool) -> str:
    """The suggestion to show for raw model output at the cursor ('' for none)."""
    text = text.replace("\r\n", "\n")
    if not multiline:
        text = text.split("\n", 1)[0]
    else:
        text = cut_at_dedent(text, prefix, suffix, language)
        text = trim_repeated_lines(text, suffix)
        text = trim_own_repeats(text)
        if language == "python" and "\n" in text.strip("\n"):
            text = keep_what_parses(text.rstrip(), prefix, suffix)
        text = text.rstrip()
    text = trim_closers(text, suffix)
    if language != "python" and syntax.parser_for(language) is not None:
        text = syntax.keep_what_parses(text, prefix, suffix, language, close=multiline)
    if not text.strip():
        return ""
    return text
