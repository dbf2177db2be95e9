"""The `codegen-lsp` command: generate (raw engine output) and the server commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.errors import EngineError
from lsp_server.settings import KEYS, SPECS

log = logging.getLogger("codegen-lsp")

LOAD_FLAGS = ("model", "device", "dtype", "quantization", "compile")  # what `generate` and `bench` load with
REMOTE_FLAGS = ("backend", "endpoint", "remote_model", "api_key_env", "request_timeout_ms")  # lsp_server/backends/


def add_setting_flags(parser: argparse.ArgumentParser, names, *, defaults: bool) -> None:
    """--NAME for each setting, with its choices, type and help from the settings schema.

    defaults=False leaves a flag that is not given None, so that it does not override
    what the editor settings and project files say (`complete`).
    """
    for name in names:
        spec = SPECS[name]
        kind = {"choices": spec.choices} if spec.choices else {"type": spec.type}
        required = defaults and name == "model"  # `generate` and `bench` need a checkpoint
        default = spec.default if defaults and not required else None
        parser.add_argument(f"--{name.replace('_', '-')}", **kind, default=default, required=required, help=spec.description)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codegen-lsp", description="Local code completion for your editor.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="print the raw continuation of a prompt")
    add_setting_flags(gen, LOAD_FLAGS + ("max_new_tokens", "speculative") + REMOTE_FLAGS, defaults=True)
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", help="file whose contents are the prompt")
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="pick the most likely token (default)")
    mode.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--json", action="store_true", help='print {"text", "token_ids", "stats"}')
    gen.set_defaults(run=run_generate)
    add_bench_command(commands)
    add_server_commands(commands)
    export = commands.add_parser("export-gguf", help="write a GPTBigCode checkpoint as a GGUF file for llama.cpp")
    export.add_argument("model", help="checkpoint directory or hub id in the local cache (\"\": the demo model)")
    export.add_argument("out", help="the .gguf file to write")
    export.add_argument("--outtype", choices=("f32", "f16"), default="f32", help="weight type (norms and biases stay f32)")
    export.set_defaults(run=run_export_gguf)
    return parser


def add_server_commands(commands) -> None:
    serve = commands.add_parser("serve", help="run the language server (stdio unless --tcp)")
    transport = serve.add_mutually_exclusive_group()
    transport.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP port instead of stdio")
    # Clients such as vscode-languageclient's TransportKind.stdio append --stdio: accept it.
    transport.add_argument("--stdio", action="store_true", help="stdio (the default; accepted for clients that pass it)")
    serve.set_defaults(run=run_serve)

    comp = commands.add_parser(
        "complete", help="print the suggestion the server gives at a position of a file",
        description="Starts the server over stdio, opens FILE and prints the inline completion at "
        "--line/--character (0-based, UTF-16 code units, as in LSP). Options given here are editor "
        "settings; when --model is given, project files (.codegen-lsp.toml) are not read.",
    )  # fmt: skip
    comp.add_argument("file")
    comp.add_argument("--line", type=int, required=True, help="0-based line")
    comp.add_argument("--character", type=int, required=True, help="0-based UTF-16 column")
    add_setting_flags(comp, KEYS, defaults=False)
    comp.add_argument("--json", action="store_true", help='print {"text": ..., "stats": {...}}')
    comp.set_defaults(run=run_complete)


def run_serve(args: argparse.Namespace) -> int:
    logging.getLogger("pygls").setLevel(logging.WARNING)  # it logs every message at INFO
    from lsp_server.server import serve

    serve(args.tcp)
    return 0


def run_complete(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from lsp_server.client import suggestion_over_stdio

    if args.line < 0 or args.character < 0:
        raise EngineError("--line and --character must be 0 or more")
    settings = {name: getattr(args, name) for name in KEYS if getattr(args, name) is not None}
    result = asyncio.run(suggestion_over_stdio(Path(args.file), args.line, args.character, settings, args.verbose))
    if args.json:
        print(json.dumps({"text": result.text, "stats": result.stats}))
    else:
        sys.stdout.write(result.text + "\n")
    return 0


def add_bench_command(commands) -> None:
    bench = commands.add_parser("bench", help="measure load time, prefill and decode speed, memory")
    add_setting_flags(bench, LOAD_FLAGS, defaults=True)
    bench.add_argument("--prompt-tokens", type=int, default=512)
    bench.add_argument("--new-tokens", type=int, default=64)
    bench.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench.set_defaults(run=run_bench_command)


def load(args: argparse.Namespace):
    """The model `generate` and `bench` name (torch is imported here, not with the command line)."""
    from engine.loading import load_model

    return load_model(args.model, **{name: getattr(args, name) for name in LOAD_FLAGS[1:]})


def run_bench_command(args: argparse.Namespace) -> int:
    from engine.bench import bench_prompt, run_bench

    if args.prompt_tokens < 1 or args.new_tokens < 1 or args.repeat < 1:
        raise EngineError("--prompt-tokens, --new-tokens and --repeat must be at least 1")
    lm = load(args)
    if args.prompt_tokens + args.new_tokens + 1 > lm.config.n_positions:
        raise EngineError(f"--prompt-tokens + --new-tokens must fit the model's window of {lm.config.n_positions}")
    result = run_bench(lm, bench_prompt(lm, args.prompt_tokens), args.new_tokens, args.repeat)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{lm.path.name}: {lm.config.model_type}, {lm.device}, {str(lm.dtype).removeprefix('torch.')}, "
              f"quantization {lm.quantization}, compiled {'yes' if lm.decode_step else 'no'}")
        print("\n".join(result.lines()))
    return 0


def remote_generator(args: argparse.Namespace):
    """The remote backend the flags name (lsp_server/backends/): `model`'s tokenizer and a server's client."""
    from lsp_server.backends import load as load_backend
    from lsp_server.settings import Settings, apply

    raw = {name: getattr(args, name) for name in ("model",) + REMOTE_FLAGS}
    settings, problems = apply(Settings(), raw, "command line")
    if problems:
        raise EngineError(problems[0])
    return load_backend(settings)


def run_generate(args: argparse.Namespace) -> int:
    from engine.generate import SamplingParams, generate
    from engine.session import Session

    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8", errors="surrogateescape") as f:
                prompt = f.read()
        except OSError as exc:
            raise EngineError(f"cannot read prompt file: {exc}") from None
    else:
        prompt = args.prompt
    if args.max_new_tokens < 1:
        raise EngineError("--max-new-tokens must be at least 1")
    if not 0.0 < args.top_p <= 1.0:
        raise EngineError("--top-p must be in (0, 1]")
    remote = remote_generator(args) if args.backend != "local" else None
    lm = remote.lm if remote else load(args)
    start, prompt_ids = lm.tokenizer.start_ids, lm.tokenizer.encode(prompt)
    if not prompt_ids:
        raise EngineError("the prompt is empty")
    room = lm.config.n_positions - args.max_new_tokens - len(start)
    if len(prompt_ids) > room:
        log.warning("prompt of %d tokens cut to its last %d to fit the window", len(prompt_ids), room)
        prompt_ids = prompt_ids[-max(room, 1) :]
    prompt_ids = [*start, *prompt_ids]  # the bos of the tokenizers that put one before every text
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        speculative=args.speculative,
    )
    result = remote.sessions.get("").generate(prompt_ids, params) if remote else generate(Session(lm), prompt_ids, params)
    if args.json:
        print(json.dumps({"text": result.text, "token_ids": result.token_ids, "stats": result.stats.to_dict()}))
    else:
        sys.stdout.write(result.text + "\n")
    return 0


def run_export_gguf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.gguf_export import export_gguf

    print(export_gguf(args.model or None, Path(args.out), args.outtype))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except EngineError as exc:
        print(f"codegen-lsp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
