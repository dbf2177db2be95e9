"""Stop rules and trimming on hand-written cases (no model, no server)."""

import pytest

from lsp_server.postprocess import (
    cut_at_dedent,
    language_of,
    postprocess,
    stop_sequences,
    trim_closers,
    trim_own_repeats,
    trim_repeated_lines,
    wants_multiline,
)


@pytest.mark.parametrize(
    "prefix, suffix, mode, expected",
    [
        ("def f(x):", "\n", "auto", True),  # end of a line that opens a block
        ("def f(x):  # doc", "", "auto", True),
        ("x = 1\n    ", "\nfoo()", "auto", True),  # empty line
        ("x = foo(", ")\n", "auto", False),  # text after the cursor
        ("x = 1", "\n", "auto", False),  # end of an ordinary line
        ("x = 1", "\n", "always", True),
        ("def f(x):", "\n", "never", False),
    ],
)
def test_wants_multiline(prefix, suffix, mode, expected):
    assert wants_multiline(prefix, suffix, "python", mode) is expected


def test_wants_multiline_generic_braces():
    assert wants_multiline("function f() {", "\n}", "javascript", "auto")
    assert not wants_multiline("let x = 1;", "", "javascript", "auto")


def test_stop_sequences():
    assert stop_sequences("python", False) == ("\n",)
    python = stop_sequences("python", True)
    assert "\ndef " in python and "\nclass " in python and "\n@" in python and "\nif __name__" in python
    assert stop_sequences("rust", True)[0] == "\n\n\n" and "\nfn " in stop_sequences("rust", True)
    assert stop_sequences("markdown", True) == ("\n\n\n",)


def test_language_of():
    assert language_of("Python", "file:///a.txt") == "python"
    assert language_of("", "file:///x/mod.py") == "python"
    assert language_of("", "file:///x/mod.c") == "c"
    assert language_of("", "file:///x/notes.txt") == ""
    assert language_of("TypeScriptReact", "") == "typescriptreact" and language_of("jsx", "") == "javascriptreact"


@pytest.mark.parametrize(
    "prefix, text, language, expected",
    [
        pytest.param("def f(x):", "\n    y = x + 1\n    return y\nprint(f(2))\n", "python",
                     "\n    y = x + 1\n    return y", id="dedent-ends-a-python-body"),
        pytest.param("def f(x):\n    y = 1\n    ", "z = y\n    return z\n\nx = 3", "python",
                     "z = y\n    return z\n", id="empty-line-inside-a-block"),
        pytest.param("class A:", "\n    a = 1\n\n    def g(self):\n        pass\nB = 2", "python",
                     "\n    a = 1\n\n    def g(self):\n        pass", id="blank-lines-inside-the-block-stay"),
        pytest.param("function f() {", "\n  return 1;\n}\nfunction g() {}", "javascript",
                     "\n  return 1;\n}", id="closing-brace-ends-the-block-and-is-kept"),
    ],
)
def test_cut_at_dedent(prefix, text, language, expected):
    assert cut_at_dedent(text, prefix, "", language) == expected


def test_trim_repeated_lines():
    suffix = "\n\n    return total\n"
    text = "\n    total = sum(xs)\n    return total"
    assert trim_repeated_lines(text, suffix) == "\n    total = sum(xs)"
    assert trim_repeated_lines("\n    a = 1", suffix) == "\n    a = 1"


@pytest.mark.parametrize(
    "text, suffix, expected",
    [
        ("a, b)", ")", "a, b"),
        ("a, b))", "))\n", "a, b"),
        ('"hello")', '")', '"hello'),
        ("x]", "] + y", "x"),
        ("a, b", ")", "a, b"),  # nothing to trim
        ("a)", "", "a)"),
    ],
)
def test_trim_closers(text, suffix, expected):
    assert trim_closers(text, suffix) == expected


def test_postprocess_single_line_stops_at_the_line_end():
    assert postprocess("total = 0\nfor x in xs:", "def f(xs):\n    ", "", "python", False) == "total = 0"


def test_postprocess_drops_whitespace_only():
    assert postprocess("   \n  \n", "x = 1", "\n", "python", True) == ""
    assert postprocess("  ", "x = ", "\n", "python", False) == ""


def test_postprocess_block_with_everything():
    prefix = "def area(r):"
    suffix = "\n    return result\n\nprint(area(2))\n"
    text = "\n    result = 3.14 * r * r\n    return result\n\nprint(area(2))"
    assert postprocess(text, prefix, suffix, "python", True) == "\n    result = 3.14 * r * r"


def test_postprocess_normalises_crlf():
    assert postprocess("\r\n    return 1\r\n", "def f():", "", "python", True) == "\n    return 1"


def test_a_block_stops_before_it_repeats_itself():
    text = "\n    x = f(x)\n    y = g(x)\n    x = f(x)\n    y = g(x)"
    assert trim_own_repeats(text) == "\n    x = f(x)\n    y = g(x)"
    assert trim_own_repeats("a\n\nb\n\nc") == "a\n\nb\n\nc"  # blank lines are not a loop


@pytest.mark.parametrize("text, expected", [
    # A half-written last line (the token limit) is dropped.
    ("if n < 2:\n        return n\n    return fib(n - 1) + fib(", "if n < 2:\n        return n"),
    # An unclosed bracket is cut back to the last line that leaves the file valid.
    ("total = 0\n    for x in [\n        1,", "total = 0"),
    # Everything parses: all of it stays.
    ("a = n\n    return a", "a = n\n    return a"),
])
def test_a_python_block_keeps_the_lines_that_parse(text, expected):
    prefix, suffix = "def fib(n):\n    ", "\n\n\nprint(fib(3))\n"
    assert postprocess(text, prefix, suffix, "python", True) == expected


def test_a_block_is_kept_when_the_code_around_it_does_not_parse_anyway():
    prefix, suffix = "def f(:\n    ", "\n"  # the user's own syntax error, above the cursor
    assert postprocess("a = 1\n    b = (", prefix, suffix, "python", True) == "a = 1\n    b = ("


def test_a_python_block_that_cannot_parse_is_dropped_when_the_file_parses_without_it():
    prefix, suffix = 'def fib(n):\n    """The n-th Fibonacci number."""\n    ', "\n"
    assert postprocess("return [\n        return [", prefix, suffix, "python", True) == ""
