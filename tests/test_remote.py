"""Remote backend settings and failures that need no inference server: the settings schema's
new keys, and the message for a closed port (a real refused connection, not a mock)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest
from lsprotocol import types

from engine.generate import SamplingParams
from lsp_server.backends import load
from lsp_server.backends.remote import RemoteError, render, split_prompt
from lsp_server.settings import Settings, apply


def test_backend_settings_are_validated_and_keys_are_never_read_from_settings(tmp_path):
    settings, problems = apply(Settings(), {"backend": "openai", "endpoint": "http://127.0.0.1:8080/", "remote_model": "m",
                                            "api_key_env": "TEAM_KEY", "request_timeout_ms": 2000}, "editor")  # fmt: skip
    assert problems == [] and settings.backend == "openai" and settings.api_key_env == "TEAM_KEY"
    assert settings.engine_key() != Settings().engine_key()
    _, problems = apply(Settings(), {"backend": "vllm", "endpoint": "127.0.0.1:8080", "api_key": "sk-123"}, "f.toml")
    assert "backend: expected one of local, openai, llama.cpp" in problems[0]
    assert "endpoint: expected an http:// or https:// base URL" in problems[0]
    assert "api_key: a key is never read from settings" in problems[0] and "sk-123" not in problems[0]
    # A repository's project file may not send just any variable to its endpoint.
    settings, problems = apply(Settings(), {"api_key_env": "AWS_SECRET_ACCESS_KEY"}, "p.toml", root=tmp_path)
    assert settings.api_key_env == "" and "starting with CODEGEN_LSP_" in problems[0]
    settings, problems = apply(Settings(), {"api_key_env": "CODEGEN_LSP_TEAM"}, "p.toml", root=tmp_path)
    assert settings.api_key_env == "CODEGEN_LSP_TEAM" and problems == []


def test_a_remote_backend_needs_an_endpoint():
    with pytest.raises(Exception, match="needs an endpoint"):
        load(apply(Settings(), {"backend": "openai"}, "editor")[0])


def test_prompts_are_rendered_with_the_models_fim_tokens():
    backend = load(apply(Settings(), {"backend": "openai", "endpoint": "http://127.0.0.1:9"}, "editor")[0])
    tokenizer = backend.lm.tokenizer
    f = tokenizer.fim
    spm = [f.prefix, f.suffix, *tokenizer.encode(")\n"), f.middle, *tokenizer.encode("print(x")]
    psm = [f.prefix, *tokenizer.encode("print(x"), f.suffix, *tokenizer.encode(")\n"), f.middle]
    assert render(tokenizer, split_prompt(tokenizer, spm)) == "<fim_prefix><fim_suffix>)\n<fim_middle>print(x"
    assert render(tokenizer, split_prompt(tokenizer, psm)) == "<fim_prefix>print(x<fim_suffix>)\n<fim_middle>"


@pytest.mark.parametrize("family", ["deepseek", "codellama"])
def test_a_servers_prompt_leaves_the_bos_to_its_tokenizer_and_keeps_the_text(family, family_checkpoint):
    from engine.prompt import build_prompt
    from engine.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(family_checkpoint(family))
    pre, suf, mid = (tokenizer.token(i) for i in (tokenizer.fim.prefix, tokenizer.fim.suffix, tokenizer.fim.middle))
    for prefix, suffix in (("def f(", " x)\n"), ("if x:\n    y", ")\n")):
        psm = build_prompt(tokenizer, prefix, suffix, max_prompt_tokens=64)
        assert render(tokenizer, split_prompt(tokenizer, psm.ids)) == f"{pre}{prefix}{suf}{suffix}{mid}"
        spm = build_prompt(tokenizer, prefix, suffix, max_prompt_tokens=64, fim="spm")
        assert render(tokenizer, split_prompt(tokenizer, spm.ids)) == f"{pre}{suf}{suffix}{mid}{prefix}"
        plain = build_prompt(tokenizer, prefix, suffix, max_prompt_tokens=64, fim="off")
        assert render(tokenizer, split_prompt(tokenizer, plain.ids)) == prefix
        # Going on after a suggestion: the generated text, its leading space included, follows the prefix.
        generated = tokenizer.encode(" z", continuation=True)
        assert split_prompt(tokenizer, psm.ids + generated).prefix == prefix + " z"


def test_a_closed_port_is_one_clear_message_and_requests_pause_briefly():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    backend = load(apply(Settings(), {"backend": "openai", "endpoint": endpoint}, "editor")[0])
    session = backend.sessions.get("a.py")
    ids = backend.lm.tokenizer.encode("def f(x):")
    with pytest.raises(RemoteError) as refused:
        session.generate(ids, SamplingParams(max_new_tokens=4), threading.Event())
    assert str(refused.value) == f"nothing answers at {endpoint} (connection refused): is the server running? (endpoint)"
    started = time.perf_counter()
    with pytest.raises(RemoteError) as paused:  # within the pause: no connection attempt, same message
        session.generate(ids, SamplingParams(max_new_tokens=4), threading.Event())
    assert str(paused.value) == str(refused.value) and time.perf_counter() - started < 0.1


def server_threads(client) -> int:
    return len(os.listdir(f"/proc/{client._server.pid}/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts the server's threads in /proc")
async def test_changing_the_endpoint_leaves_no_thread_behind(tmp_path):
    """Each remote backend has a thread closing cancelled responses; a backend no folder uses
    any more is closed, thread included (nothing listens at these endpoints: none is asked)."""
    from test_server import ended_loads, start_server, stop_server, wait_for

    folder = tmp_path / "project"
    folder.mkdir()
    endpoint = {"backend": "openai", "debounce_ms": 0, "endpoint": "http://127.0.0.1:9"}
    client = await start_server([folder], configuration={folder.as_uri(): endpoint})
    try:
        counts = []
        for port in range(10, 16):
            await wait_for(lambda: ended_loads(client) >= len(counts) + 1, "the backend of the endpoint")
            await asyncio.sleep(0.2)  # the dropped backend's close runs in the generation worker
            counts.append(server_threads(client))
            client.set_configuration({**endpoint, "endpoint": f"http://127.0.0.1:{port}"}, section="codegen-lsp",
                                     scope_uri=folder.as_uri())  # fmt: skip
            client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        await wait_for(lambda: ended_loads(client) >= len(counts) + 1, "the backend of the endpoint")
        await asyncio.sleep(0.2)
        counts.append(server_threads(client))
        # The first change starts the generation worker (where the dropped backend is closed); then no growth.
        assert counts[1:] == counts[1:2] * (len(counts) - 1), counts
        ends = [r.message for reports in client.progress_reports.values() for r in reports
                if isinstance(r, types.WorkDoneProgressEnd)]  # fmt: skip
        # The ready message names where suggestions come from.
        assert ends[-1].endswith("; suggestions from http://127.0.0.1:15 (backend openai)"), ends
    finally:
        await stop_server(client)
