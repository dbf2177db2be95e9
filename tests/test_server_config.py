"""Settings and models end to end: per-folder models and precedence, sharing and
unloading, requests before the model is ready, a model that does not exist,
exit codes, and the `codegen-lsp complete` command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from lsprotocol import types

from test_server import ROOT, Expected, edit, ended_loads, inline, open_doc, start_server, stats, stop_server, wait_for

EMOJI_CODE = 'def shout(text):\n    """Loud 🎉 text."""\n    return text.upper() + "!🎉"\n\n\nprint(shout("hi"))\n'


def toml(**settings) -> str:
    return "".join(f"{k} = {json.dumps(str(v) if k == 'model' else v)}\n" for k, v in settings.items())


@pytest.mark.asyncio(loop_scope="module")
async def test_models_per_folder_with_precedence_sharing_and_unloading(
    tmp_path, codegen_dir, bigcode_mq_dir, codegen_bin_dir
):
    folders = {name: tmp_path / name for name in ("toml", "pyproject", "editor", "shared")}
    for folder in folders.values():
        folder.mkdir()
    # .codegen-lsp.toml beats [tool.codegen-lsp] in the same folder.
    (folders["toml"] / ".codegen-lsp.toml").write_text(toml(model=codegen_dir))
    (folders["toml"] / "pyproject.toml").write_text("[tool.codegen-lsp]\n" + toml(model=bigcode_mq_dir, max_new_tokens=3))
    (folders["pyproject"] / "pyproject.toml").write_text('[project]\nname = "p"\n\n[tool.codegen-lsp]\n' + toml(model=bigcode_mq_dir, ramble_stop="off"))
    (folders["shared"] / ".codegen-lsp.toml").write_text(toml(model=codegen_dir, max_new_tokens=5))
    # Editor settings: workspace/configuration beats initializationOptions; project files beat both.
    init_options = {"codegen-lsp": {"model": "/no/such/model", "debounce_ms": 0, "max_new_tokens": 8}}
    configuration = {
        "": {"debounce_ms": 0, "max_new_tokens": 8, "multiline": "always"},
        folders["editor"].as_uri(): {"model": str(codegen_bin_dir), "debounce_ms": 0, "max_new_tokens": 6},
    }
    client = await start_server(list(folders.values()), init_options, configuration, ["utf-16", "utf-8"], initialize=False)
    try:
        result = await client.initialize_async(client.init_params)
        assert result.capabilities.position_encoding == types.PositionEncodingKind.Utf8

        # A request before the model is ready gets an empty result (initialized is not even sent yet).
        early_uri = (folders["toml"] / "early.py").as_uri()
        open_doc(client, early_uri, EMOJI_CODE)
        early = await inline(client, early_uri, 0, 16)
        if ended_loads(client) == 0:  # the answer came before the load ended, as it does in practice
            assert early == []
        client.initialized(types.InitializedParams())
        await wait_for(lambda: ended_loads(client) >= 3, "three models to load")
        assert client.messages == []  # "/no/such/model" is never loaded: every folder overrides it
        for reports in client.progress_reports.values():
            assert isinstance(reports[0], types.WorkDoneProgressBegin) and isinstance(reports[-1], types.WorkDoneProgressEnd)

        want = {"toml": codegen_dir, "pyproject": bigcode_mq_dir, "editor": codegen_bin_dir, "shared": codegen_dir}
        limits = {"toml": 8, "pyproject": 8, "editor": 6, "shared": 5}
        for name, folder in folders.items():
            uri = (folder / "shout.py").as_uri()
            open_doc(client, uri, EMOJI_CODE)
            # UTF-8 columns: the end of line 2 is after the 4-byte emoji and the closing quote.
            line2 = EMOJI_CODE.splitlines()[2]
            items = await inline(client, uri, 2, len(line2.encode("utf-8")) - 1)
            last = (await stats(client))["last"]
            assert last["model"] == str(want[name]), name
            assert last["generated_tokens"] <= limits[name]
            for item in items:
                assert item.range.start == types.Position(line=2, character=len(line2.encode("utf-8")) - 1)
            if name == "pyproject":  # a FIM model, with text after the cursor
                expected = Expected(bigcode_mq_dir, debounce_ms=0, max_new_tokens=8, multiline="always", ramble_stop="off")
                assert [i.insert_text for i in items] == [expected(EMOJI_CODE, 2, len(line2.encode("utf-8")) - 1, "utf-8")]
        assert (await stats(client))["models"] == sorted(map(str, {codegen_dir, bigcode_mq_dir, codegen_bin_dir}))

        # Editing a project file applies at the next request.
        (folders["pyproject"] / "pyproject.toml").write_text("[tool.codegen-lsp]\n" + toml(model=bigcode_mq_dir, max_new_tokens=2))
        await inline(client, (folders["pyproject"] / "shout.py").as_uri(), 0, 3)
        assert (await stats(client))["last"]["generated_tokens"] <= 2

        # The editor folder switches to the model the others use: the one nobody uses is unloaded.
        client.set_configuration(
            {"model": str(codegen_dir), "debounce_ms": 0}, section="codegen-lsp", scope_uri=folders["editor"].as_uri()
        )
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        for _ in range(2400):
            models = (await stats(client))["models"]
            if len(models) == 2:
                break
            await asyncio.sleep(0.05)
        assert models == sorted(map(str, {codegen_dir, bigcode_mq_dir}))
        await inline(client, (folders["editor"] / "shout.py").as_uri(), 0, 3)
        assert (await stats(client))["last"]["model"] == str(codegen_dir)
    finally:
        await stop_server(client)


@pytest.mark.asyncio(loop_scope="module")
async def test_missing_model_is_reported_once_and_exit_code_is_zero(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    settings_file = folder / ".codegen-lsp.toml"
    settings_file.write_text('model = "/no/such/model"\nmax_new_token = 5\ndevice = "tpu"\ndebounce_ms = 0\n')
    client = await start_server([folder])
    try:
        await wait_for(lambda: ended_loads(client) >= 1, "the load to fail")
        errors = [m for m in client.messages if m.type == types.MessageType.Error]
        warnings = [m for m in client.messages if m.type == types.MessageType.Warning]
        assert len(errors) == 1
        assert "/no/such/model" in errors[0].message and str(settings_file) in errors[0].message
        assert "model" in errors[0].message and "not found" in errors[0].message
        assert any(str(settings_file) in w.message and "max_new_token" in w.message for w in warnings)
        assert any(str(settings_file) in w.message and "device" in w.message and "tpu" in w.message for w in warnings)

        uri = (folder / "a.py").as_uri()
        open_doc(client, uri, "def f(x):\n")
        assert await inline(client, uri, 0, 9) == []
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[edit(1, 0, 1, 0, "    ")],
            )
        )
        assert await inline(client, uri, 1, 4) == []
        assert len([m for m in client.messages if m.type == types.MessageType.Error]) == 1  # reported once
        figures = await stats(client)
        assert figures["requests"] == 0
        # codegen/stats tells what an editor's status must show: the failed model, from the project file.
        (folder_status,) = [f for f in figures["folders"] if f["root"] == str(folder)]
        assert folder_status["model"] == "/no/such/model" and folder_status["state"] == "failed"
        assert folder_status["model_source"] == f"project file {settings_file}"
        assert "not found" in folder_status["error"]
    finally:
        await stop_server(client)  # shutdown, then exit
    assert client._server.returncode == 0


def test_complete_command(tmp_path, codegen_dir):
    source = tmp_path / "demo.py"
    source.write_text(EMOJI_CODE)
    line2 = EMOJI_CODE.splitlines()[2]
    character = len(line2.encode("utf-16-le")) // 2 - 1  # before the closing quote, after the emoji
    command = [sys.executable, "-m", "lsp_server", "complete", str(source), "--line", "2", "--character", str(character)]
    command += ["--model", str(codegen_dir), "--max-new-tokens", "10", "--multiline", "never", "--json"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    expected = Expected(codegen_dir, max_new_tokens=10, multiline="never", debounce_ms=0)
    assert result["text"] == expected(EMOJI_CODE, 2, character)
    for name in ("prompt_tokens", "reused_tokens", "prefilled_tokens", "generated_tokens", "time_to_first_token_ms", "total_ms"):
        assert name in result["stats"]
    assert 0 < result["stats"]["generated_tokens"] <= 10

    missing = subprocess.run(command[:-5] + ["--model", str(tmp_path / "nope")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert missing.returncode == 1 and "not found" in missing.stderr
