"""Keystroke to ghost text through the server, as an editor sees it.

    .venv/bin/python benchmarks/keystroke_latency.py [--keystrokes 60] [--interval-ms 150] [--models codegen-2-layer demo]

`codegen-lsp serve` runs over stdio (one process per model, settings as an editor sends them:
debounce 0, 16 new tokens). A document holding the first 1,500 characters of a standard-library
file is opened, and the next characters of that file are typed at its end, one didChange per
keystroke every --interval-ms, each followed at once by textDocument/inlineCompletion at the
cursor. Latency is from sending the didChange to the answer; printed: median, 95th percentile and
maximum, the engine's own time (codegen/stats total_ms, median), how many answers came from typeahead (the previous suggestion, no model call) and the
load average beside them (the machine is shared: read figures with it).

Models: "codegen-2-layer", the tests' 2-layer CodeGen (random weights, CodeGen's 50,295-token
vocabulary), and "demo", the shipped demo model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.common import real_code  # noqa: E402
from lsp_server.methods import MODEL_STATUS, SECTION, STATS  # noqa: E402

PROMPT_CHARS = 1500


def model_spec(name: str, scratch: Path) -> str:
    if name == "demo":
        return ""
    if name == "codegen-2-layer":
        import checkpoints

        return str(checkpoints.make_codegen(scratch / name))
    raise SystemExit(f"unknown model {name!r}")


async def replay(spec: str, text: str, keystrokes: int, interval_s: float, settings: dict) -> tuple[list[float], int, list[int], list[float]]:
    client = LanguageClient("keystroke-latency", "0.1.0")
    loaded: asyncio.Future = asyncio.get_running_loop().create_future()

    @client.feature(MODEL_STATUS)
    def model_status(params) -> None:
        if not loaded.done():
            loaded.set_result(params)

    await client.start_io(sys.executable, "-m", "lsp_server", "serve")
    drain = asyncio.create_task(_drain(client._server.stderr))
    latencies, typeahead, generated, engine_ms = [], 0, [], []
    try:
        capabilities = types.ClientCapabilities(
            text_document=types.TextDocumentClientCapabilities(inline_completion=types.InlineCompletionClientCapabilities()))
        options = {SECTION: {"model": spec, "debounce_ms": 0, "max_new_tokens": 16, **settings}}
        await client.initialize_async(types.InitializeParams(capabilities=capabilities, initialization_options=options))
        client.initialized(types.InitializedParams())
        await asyncio.wait_for(loaded, 1800)
        uri = (ROOT / "replay.py").as_uri()  # never written: the server reads documents from the client
        document = text[:PROMPT_CHARS]
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=document)))
        for version, char in enumerate(text[PROMPT_CHARS : PROMPT_CHARS + keystrokes], start=2):
            lines = document.split("\n")
            end = types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2)
            document += char
            lines = document.split("\n")
            cursor = types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2)
            start = time.perf_counter()
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=end, end=end), text=char)]))
            await client.text_document_inline_completion_async(types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=cursor,
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
            latencies.append((time.perf_counter() - start) * 1000)
            stats = await client.protocol.send_request_async(STATS, None)
            last = stats.last
            typeahead += bool(getattr(last, "typeahead", False))
            generated.append(getattr(last, "generated_tokens", 0))
            engine_ms.append(getattr(last, "total_ms", 0.0))
            await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - start)))
        await client.shutdown_async(None)
        client.exit(None)
        await asyncio.wait_for(client._server.wait(), 30)
    finally:
        if client._server.returncode is None:
            client._server.kill()
        await client.stop()
        drain.cancel()
    return latencies, typeahead, generated, engine_ms


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keystrokes", type=int, default=60)
    parser.add_argument("--interval-ms", type=float, default=150.0)
    parser.add_argument("--models", nargs="+", default=["codegen-2-layer", "demo"])
    parser.add_argument("--quantizations", nargs="+", default=["none", "int8"])
    args = parser.parse_args()
    text = real_code(PROMPT_CHARS + args.keystrokes + 1)
    print(f"{PROMPT_CHARS}-character document, {args.keystrokes} keystrokes at its end every {args.interval_ms:.0f} ms, "
          "debounce 0, 16 new tokens")
    print(f"{'model':<22} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'engine ms':>9} {'typeahead':>9} {'tokens/answer':>13}  load")
    with tempfile.TemporaryDirectory() as scratch:
        runs = [(name, model_spec(name, Path(scratch)), quantization) for name in args.models for quantization in args.quantizations]
        for name, spec, quantization in runs:
            latencies, typeahead, generated, engine_ms = asyncio.run(
                replay(spec, text, args.keystrokes, args.interval_ms / 1000, {"quantization": quantization}))
            label = f"{name} {quantization}"
            print(f"{label:<22} {statistics.median(latencies):>7.1f} {percentile(latencies, 0.95):>7.1f} "
                  f"{max(latencies):>7.1f} {statistics.median(engine_ms):>9.1f} {typeahead:>5}/{len(latencies):<3} "
                  f"{statistics.mean(generated):>13.1f}  {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
