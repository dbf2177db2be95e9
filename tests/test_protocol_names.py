"""The custom names on the wire (lsp_server/methods.py) as the server and both editor clients spell them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lsp_server import methods

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = {
    "vscode": sorted((ROOT / "editors" / "vscode" / "src").glob("*.ts")),
    "neovim": sorted((ROOT / "editors" / "neovim" / "lua").rglob("*.lua")),
    "server": sorted((ROOT / "lsp_server").glob("*.py")),
}
CUSTOM = re.compile(r"[\"'](codegen/[A-Za-z/_-]+)[\"']")


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_clients_spell_the_custom_methods_as_the_server_does(client):
    sources = {path: path.read_text(encoding="utf-8") for path in CLIENTS[client]}
    spelled = {name for text in sources.values() for name in CUSTOM.findall(text)}
    assert spelled <= set(methods.CUSTOM_METHODS), f"{client} uses methods the server does not know"
    if client != "server":  # the server names them through lsp_server/methods.py only
        assert spelled == set(methods.CUSTOM_METHODS), f"{client} lacks {set(methods.CUSTOM_METHODS) - spelled}"
        assert any(f'"{methods.SECTION}"' in text for text in sources.values())
        assert all(f'"{status}"' in "".join(sources.values()) for status in (methods.READY, methods.FAILED))
    else:
        assert [p.name for p, text in sources.items() if CUSTOM.search(text)] == ["methods.py"]
