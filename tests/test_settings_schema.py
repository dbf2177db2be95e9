"""The settings schema (lsp_server/settings.py) against what is written from it elsewhere: the
VS Code extension's settings (package.json, src/config.ts) and the README's table.

`python tests/test_settings_schema.py` rewrites package.json's settings and the README's table
from the schema; the tests fail whenever the two disagree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsp_server.methods import SECTION  # noqa: E402
from lsp_server.settings import KEYS, SCHEMA, SettingSpec  # noqa: E402

PACKAGE_JSON = ROOT / "editors" / "vscode" / "package.json"
CONFIG_TS = ROOT / "editors" / "vscode" / "src" / "config.ts"
README = ROOT / "README.md"
TABLE_HEADER = "| key | values (default) | |\n|---|---|---|\n"


def vscode_property(spec: SettingSpec) -> dict:
    prop: dict = {"type": "integer" if spec.type is int else "string", "default": spec.default}
    if spec.choices:
        prop["enum"] = list(spec.choices)
    if spec.bounds:
        prop["minimum"], prop["maximum"] = spec.bounds
    prop["description"] = spec.description
    return prop


def vscode_properties(package: dict) -> dict:
    """package.json's settings with the schema's: the extension's own (serverCommand) first, as they are."""
    properties = package["contributes"]["configuration"]["properties"]
    own = {key: value for key, value in properties.items() if key.removeprefix(f"{SECTION}.") not in KEYS}
    return {**own, **{f"{SECTION}.{spec.name}": vscode_property(spec) for spec in SCHEMA}}


def readme_row(spec: SettingSpec) -> str:
    if spec.choices:
        values = r" \| ".join(f"`{choice}`" for choice in spec.choices)
        if spec.default != spec.choices[0]:
            values += f" (`{spec.default}`)"
    elif spec.bounds:
        values = f"{spec.bounds[0]}..{spec.bounds[1]} ({spec.default})"
    else:
        values = spec.values
    return f"| `{spec.name}` | {values} | {spec.description} |"


def readme_table() -> str:
    return TABLE_HEADER + "\n".join(readme_row(spec) for spec in SCHEMA) + "\n"


def readme_with_table(text: str) -> str:
    start = text.index(TABLE_HEADER)
    end = text.index("\n\n", start)
    return text[:start] + readme_table() + text[end + 1 :]


def test_vscode_package_json_offers_exactly_the_schema():
    package = json.loads(PACKAGE_JSON.read_text(encoding="utf-8"))
    assert package["contributes"]["configuration"]["properties"] == vscode_properties(package), (
        "editors/vscode/package.json disagrees with the settings schema: run python tests/test_settings_schema.py"
    )


def test_vscode_extension_sends_exactly_the_schema_keys():
    found = re.search(r"SERVER_KEYS = \[(.*?)\] as const", CONFIG_TS.read_text(encoding="utf-8"), re.S)
    assert found, "SERVER_KEYS not found in editors/vscode/src/config.ts"
    assert tuple(re.findall(r'"([a-z_]+)"', found[1])) == KEYS


def test_readme_table_is_the_schema():
    text = README.read_text(encoding="utf-8")
    assert readme_table() in text, "README's settings table disagrees with the schema: run python tests/test_settings_schema.py"


def test_command_line_flags_come_from_the_schema():
    from lsp_server.cli import build_parser

    complete = build_parser()._subparsers._group_actions[0].choices["complete"]
    flags = {action.dest: action for action in complete._actions}
    for spec in SCHEMA:
        assert flags[spec.name].help == spec.description
        assert tuple(flags[spec.name].choices or ()) == spec.choices


if __name__ == "__main__":
    package = json.loads(PACKAGE_JSON.read_text(encoding="utf-8"))
    package["contributes"]["configuration"]["properties"] = vscode_properties(package)
    PACKAGE_JSON.write_text(json.dumps(package, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
