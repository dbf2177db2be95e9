"""Languages beyond Python: tree-sitter rules (lsp_server/syntax.py) through postprocess, and
which languages a model is offered for (lsp_server/languages.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine.paths import DEMO_MODEL_DIR
from lsp_server.languages import LanguageOff, check_language, checkpoint_languages, languages_for
from lsp_server.postprocess import postprocess
from lsp_server.settings import Settings, apply
from lsp_server.syntax import errors, parser_for

# (language, prefix, suggestion, suffix, expected): a block is kept whole, cut back to what
# parses, or closed when the model stopped inside it.
BLOCKS = [
    ("javascript", "function add(a, b) {", "\n  return a + b;\n}\n\nfunction g() {", "", "\n  return a + b;\n}"),
    ("javascript", "function add(a, b) {", "\n  if (a) {\n    b();", "\n}\n", "\n  if (a) {\n    b();\n  }"),
    ("typescript", "function f(x: number): number {", "\n  const y: number = x + 1;\n  return y;", "\n}\n",
     "\n  const y: number = x + 1;\n  return y;"),
    ("go", "package main\n\nfunc f(x int) int {", "\n\tif x > 0 {\n\t\treturn x", "\n}\n", "\n\tif x > 0 {\n\t\treturn x\n\t}"),
    ("rust", "fn f(x: i32) -> i32 {", "\n    let y = x + 1;\n    if y > 2 {\n        return y;", "",
     "\n    let y = x + 1;\n    if y > 2 {\n        return y;\n    }\n}"),
    ("lua", "local function f(x)", "\n  local y = x + 1\n  return y", "", "\n  local y = x + 1\n  return y\nend"),
    ("lua", "local function f(x)", "\n  local y = x + 1\n  return y\nend\n\nlocal z = 1", "", "\n  local y = x + 1\n  return y\nend"),
    ("c", "int f(int x) {", "\n    int y = x + 1;\n    return y;\n}\n\nstatic int g;", "", "\n    int y = x + 1;\n    return y;\n}"),
    ("cpp", "int f(int x) {", "\n    for (int i = 0; i < x; i++) {\n        x += i;", "\n}\n",
     "\n    for (int i = 0; i < x; i++) {\n        x += i;\n    }"),
    ("java", "class A {\n    int f(int x) {", "\n        return x + 1;\n    }\n    )(", "\n}\n", "\n        return x + 1;\n    }"),
]


@pytest.mark.parametrize("language, prefix, text, suffix, expected", BLOCKS)
def test_blocks_are_whole_and_closed(language, prefix, text, suffix, expected):
    assert postprocess(text, prefix, suffix, language, True) == expected


@pytest.mark.parametrize("language, prefix, text, suffix", [
    ("javascript", "const x = 1", " +", ""),
    ("go", "package main\n\nvar x = 1", " +", "\n"),
    ("rust", "fn main() { let x = 1;", " }}", " }"),
    ("java", "class A { int x = 1", " +", "; }"),
    ("lua", "local x = 1", " +", ""),
])  # fmt: skip
def test_a_suggestion_that_breaks_code_that_parsed_is_dropped(language, prefix, text, suffix):
    assert errors(parser_for(language), prefix + suffix) == 0
    assert postprocess(text, prefix, suffix, language, False) == ""


def test_mid_edit_code_keeps_its_suggestion():
    # The code does not parse without the suggestion: parsing cannot judge it, the suggestion stays.
    assert postprocess("a, b)", "foo(", "", "javascript", False) == "a, b)"
    assert postprocess("23;", "const x = 1", "", "javascript", False) == "23;"


def test_no_grammar_leaves_text_alone():
    assert postprocess("some words", "# Title\n", "", "markdown", False) == "some words"


def test_checkpoint_metadata_says_which_languages(tmp_path):
    assert checkpoint_languages(str(DEMO_MODEL_DIR)) == ("python",)
    mono = tmp_path / "hub" / "models--Salesforce--codegen-350M-mono" / "snapshots" / "abc"
    mono.mkdir(parents=True)
    assert checkpoint_languages(str(mono)) == ("python",)
    multi = tmp_path / "santacoder"
    multi.mkdir()
    assert checkpoint_languages(str(multi)) is None
    (multi / "config.json").write_text(json.dumps({"languages": ["Python", "JavaScript", "Java"]}))
    assert checkpoint_languages(str(multi)) == ("python", "javascript", "java")


def test_languages_setting_and_what_the_server_says():
    engine = SimpleNamespace(name="the demo model", lm=SimpleNamespace(path=DEMO_MODEL_DIR))
    auto = Settings()
    assert languages_for(engine, auto) == ["python"]
    check_language(engine, auto, "python")
    with pytest.raises(LanguageOff, match=r"the demo model is for python only .*javascript.*languages = \"all\""):
        check_language(engine, auto, "javascript")
    everything, problems = apply(auto, {"languages": "all"}, "test")
    assert not problems and languages_for(engine, everything) is None
    check_language(engine, everything, "javascript")
    listed, _ = apply(auto, {"languages": "Python, TypeScriptReact"}, "test")
    assert languages_for(engine, listed) == ["python", "typescript"]
    check_language(engine, listed, "typescript")
    _, problems = apply(auto, {"languages": ["python"]}, "test")
    assert problems and "languages: expected" in problems[0]
