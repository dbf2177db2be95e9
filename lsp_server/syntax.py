"""Syntax rules of languages other than Python, on tree-sitter parsers (the official
per-language grammar wheels): a suggestion is kept to whole lines with which the code
around it parses no worse than without it, a block it leaves open is closed when that
makes the code parse, and a suggestion that breaks code that parsed is dropped.

Python keeps its own rules (ast, postprocess.py). Plain functions of strings.
"""

from __future__ import annotations

import importlib
import logging
import re
from functools import lru_cache

log = logging.getLogger(__name__)

# Editor language id -> (module, function giving the grammar).
GRAMMARS = {
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "lua": ("tree_sitter_lua", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "java": ("tree_sitter_java", "language"),
}
# Other names editors use for the same languages.
ALIASES = {"js": "javascript", "jsx": "javascriptreact", "ts": "typescript", "tsx": "typescriptreact",
           "golang": "go", "c++": "cpp", "objc": "c"}  # fmt: skip
EXTENSIONS = {
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascriptreact",
    ".ts": "typescript", ".mts": "typescript", ".tsx": "typescriptreact", ".go": "go", ".rs": "rust",
    ".lua": "lua", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp",
    ".hh": "cpp", ".java": "java",
}  # fmt: skip
# A new top-level declaration (at column 0) ends a multi-line suggestion: it belongs to the next block.
TOP_LEVEL = {
    "javascript": ("\nfunction ", "\nexport ", "\nclass ", "\nimport ", "\nasync function "),
    "typescript": ("\nfunction ", "\nexport ", "\nclass ", "\nimport ", "\nasync function ", "\ninterface ", "\ntype "),
    "go": ("\nfunc ", "\ntype ", "\nimport ", "\npackage "),
    "rust": ("\nfn ", "\npub ", "\nimpl ", "\nstruct ", "\nenum ", "\nmod ", "\nuse ", "\n#[", "\ntrait "),
    "lua": ("\nfunction ", "\nlocal function "),
    "c": ("\n#include", "\n#define", "\nstatic ", "\ntypedef ", "\nstruct "),
    "cpp": ("\n#include", "\n#define", "\nstatic ", "\ntypedef ", "\nnamespace ", "\ntemplate", "\nclass "),
    "java": ("\nimport ", "\npackage ", "\npublic class ", "\nclass "),
}  # fmt: skip
LUA_OPENERS = re.compile(r"\b(function|do|if|repeat)\b")
LUA_CLOSERS = re.compile(r"\b(end|until)\b")


def canonical(language: str) -> str:
    language = language.lower()
    return ALIASES.get(language, language)


def family(language: str) -> str:
    """The rules' name for a language: the React and TSX dialects follow their base language."""
    language = canonical(language)
    return {"javascriptreact": "javascript", "typescriptreact": "typescript"}.get(language, language)


@lru_cache(maxsize=None)
def parser_for(language: str):
    """A tree-sitter parser, or None when there is no grammar (or its wheel is missing)."""
    spec = GRAMMARS.get(canonical(language))
    if spec is None:
        return None
    try:
        import tree_sitter

        grammar = getattr(importlib.import_module(spec[0]), spec[1])()
        return tree_sitter.Parser(tree_sitter.Language(grammar))
    except Exception as exc:  # a missing or broken wheel costs these rules, not suggestions
        log.warning("no tree-sitter parser for %s: %s", language, exc)
        return None


def errors(parser, source: str) -> int:
    """How many ERROR and MISSING nodes the parse of source has (0: it parses)."""
    root = parser.parse(source.encode("utf-8", "surrogatepass")).root_node
    if not root.has_error:
        return 0
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        if node.has_error:
            stack.extend(node.children)
    return count


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def closers(block: str, prefix: str, language: str) -> list[str]:
    """The lines that would close the blocks still open at the end of block, innermost first,
    each at the indentation of the line that opened it (the cursor line counts, since a
    suggestion after `{` writes that block's body)."""
    opened: list[str] = []  # indentation of each line that opened a block still open
    lines = (prefix[prefix.rfind("\n") + 1 :] + block).split("\n")
    for line in lines:
        code = re.sub(r"(\"|')(?:\\.|(?!\1).)*\1", "", line)  # rough: strings do not count
        code = re.sub(r"--.*$" if language == "lua" else r"//.*$", "", code)
        if language == "lua":
            delta = len(LUA_OPENERS.findall(code)) - len(LUA_CLOSERS.findall(code))
        else:
            delta = code.count("{") - code.count("}")
        for _ in range(delta):
            opened.append(indent_of(line))
        for _ in range(-delta):
            if opened:
                opened.pop()
    word = "end" if language == "lua" else "}"
    return [f"\n{indent}{word}" for indent in reversed(opened)]


def keep_what_parses(text: str, prefix: str, suffix: str, language: str, close: bool = True) -> str:
    """The most whole lines of text (closed when it leaves blocks open) with which prefix + text +
    suffix has no more syntax errors than prefix + suffix (close=False: never adds closing
    lines, for single-line suggestions). None such: '' when the code parses
    without the suggestion; else the text as it is (mid-edit code that parsing cannot judge)."""
    parser = parser_for(language)
    if parser is None or not text.strip():
        return text
    base = errors(parser, prefix + suffix)
    lines = text.split("\n")
    for n in range(len(lines), 0, -1):
        block = "\n".join(lines[:n])
        if not block.strip():
            break
        found = errors(parser, prefix + block + suffix)
        ends = closers(block, prefix, family(language)) if close else []
        for k in range(1, len(ends) + 1):  # close as few blocks as make it parse better
            closed = block + "".join(ends[:k])
            if errors(parser, prefix + closed + suffix) < min(found, base + 1):
                return closed
        if found <= base:
            return block
    return "" if base == 0 else text
