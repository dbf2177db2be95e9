"""Ours vs llama.cpp and CTranslate2 on the same random weights: decode and prefill, in one run.

    .venv/bin/python benchmarks/vs_peers.py --setup   # once: the peers' environment (15-20 min on 2 cores)
    .venv/bin/python benchmarks/vs_peers.py [--models santacoder codegen-350M-mono qwen2.5-coder-1.5b starcoder2-3b]
        [--contexts 512 1500] [--rounds 3] [--new-tokens 32] [--threads 2] [--layers N] [--compiled] [--float32]

The peers live in their own virtual environment (default ~/.cache/codegen-lsp/bench-peers,
or $CODEGEN_LSP_PEERS): llama-cpp-python built from source by pip, its sdist's
convert_hf_to_gguf.py, ctranslate2 and its converter. The project never imports them.
Each peer runs in a worker process (benchmarks/peer_worker.py) that keeps its model
loaded, so rounds interleave: ours, peers, peers reversed, ours, ... The machine's read
bandwidth is measured in the same run, and each decode figure is given with the share
of that bandwidth its weights per token need (the roofline), and the load average.

Random weights with the shapes of bigcode/gpt_bigcode-santacoder (llama.cpp arch
"starcoder", CTranslate2), Salesforce/codegen-350M-mono (CTranslate2 only: llama.cpp
has no CodeGen), Qwen/Qwen2.5-Coder-1.5B (both) and bigcode/starcoder2-3b (llama.cpp
only: CTranslate2 has no StarCoder2). Their own BPEs are not on these machines: the
checkpoints carry GPT-2's BPE, cut to the model's rows where it has fewer (SantaCoder,
StarCoder2) and padded by the converters where it has more (Qwen); llama.cpp's converter
is told it is GPT-2's pre-tokenizer (it is). Only speed is measured. --layers N keeps only
N blocks (StarCoder2-3B's float32 checkpoint, its GGUF and three engines' copies do not
fit these machines' disk and memory at once). --compiled adds ours with `compile = true`
(engine/compile.py; 40-80 s more at load); --float32 ours unquantized against llama.cpp's F32
GGUF (kept beside the quantized ones then).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, CODEGEN_TOKENIZER, bandwidth_buffer, checkpoint, cpu_flags, gpt2_tokenizer_of, real_code  # noqa: E402
from benchmarks.random_checkpoint import SHAPES, keep_layers  # noqa: E402
from engine import cpu_kernels  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.session import Session  # noqa: E402
from engine.quantize import weight_bytes_per_token  # noqa: E402

PEERS = Path(os.environ.get("CODEGEN_LSP_PEERS", "~/.cache/codegen-lsp/bench-peers")).expanduser()
PEER_PYTHON = PEERS / "venv" / "bin" / "python"
GPT2_ROWS = 50257
MODELS = {name: SHAPES[name] for name in ("santacoder", "codegen-350M-mono", "qwen2.5-coder-1.5b", "starcoder2-3b")}
# Which peer runs which model_type (llama.cpp has no CodeGen, CTranslate2 no StarCoder2).
LLAMA_CPP_TYPES = {"gpt_bigcode", "qwen2", "starcoder2"}
CTRANSLATE2_TYPES = {"codegen", "gpt_bigcode", "qwen2"}
# Bits each format stores per weight of a linear layer (block scales included).
BITS = {"llama.cpp F32": 32, "llama.cpp Q8_0": 8.5, "llama.cpp Q4_0": 4.5, "CTranslate2 int8": 8 + 32 / 2048}


def setup() -> None:
    """The peers' environment: torch from its pinned wheel first, then the peers (llama.cpp builds)."""
    if not PEER_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS / "venv")], check=True)
    pip = [str(PEER_PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["ctranslate2", "gguf", "transformers>=5.0", "numpy", "sentencepiece"], check=True)
    env, again = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count())), []
    if "amx_int8" in cpu_flags():
        env["CMAKE_ARGS"] = " ".join(llama_cpp_options_without_amx()) + " " + env.get("CMAKE_ARGS", "")
        again = ["--force-reinstall", "--no-deps", "--no-cache-dir"] if llama_cpp_uses_amx() else []  # a build from before this check (pip would reuse its wheel)
    subprocess.run(pip + again + ["llama-cpp-python"], check=True, env=env)
    version = subprocess.run([str(PEER_PYTHON), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    src = PEERS / "src"
    subprocess.run([str(PEER_PYTHON), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", str(src)], check=True)  # fmt: skip
    subprocess.run(["tar", "xzf", str(next(src.glob(f"llama_cpp_python-{version}.tar.gz"))), "-C", str(src)], check=True)


# llama.cpp's build options for the instruction sets it would take from -march=native, named by their
# /proc/cpuinfo flag.
LLAMA_CPP_ISA_OPTIONS = {"avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C", "bmi2": "GGML_BMI2",
                         "avx_vnni": "GGML_AVX_VNNI", "avx512f": "GGML_AVX512", "avx512vbmi": "GGML_AVX512_VBMI",
                         "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16"}  # fmt: skip


def llama_cpp_options_without_amx() -> list[str]:
    """CMake options for llama.cpp with this CPU's instruction sets but AMX: llama.cpp's AMX matmul
    (its weights repacked into an "AMX buffer" for Q4_0 / Q8_0) segfaults in ggml_backend_amx_mul_mat
    at the first evaluation on the 2-vCPU Intel Xeon with AMX here (llama-cpp-python 0.3.36; as in
    ggml-org/llama.cpp#20824, machine-dependent and unfixed), so -march=native cannot be used there."""
    flags = cpu_flags()
    return ["-DGGML_NATIVE=OFF"] + [f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in LLAMA_CPP_ISA_OPTIONS.items()]


def llama_cpp_uses_amx() -> bool:
    """Whether the peers' llama.cpp build has AMX on (False when there is none)."""
    info = subprocess.run([str(PEER_PYTHON), "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
                          capture_output=True, text=True)  # fmt: skip
    return "AMX_INT8 = 1" in info.stdout


def converter_dir() -> Path:
    found = sorted(PEERS.glob("src/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found or not PEER_PYTHON.exists():
        sys.exit(f"no peers' environment in {PEERS}: run `benchmarks/vs_peers.py --setup` first")
    return found[-1].parent


# ---------------------------------------------------------------- the same weights for everyone


def peers_checkpoint(name: str, config: dict) -> Path:
    if config["model_type"] != "codegen":  # GPT-2's BPE with <|endoftext|> alone, as the peers' files were made from
        return checkpoint(f"{name}-peers", config, gpt2_tokenizer_of(min(config["vocab_size"], GPT2_ROWS) - 1))
    directory = checkpoint(f"{name}-peers", config, [CODEGEN_TOKENIZER])
    (directory / "tokenizer_config.json").write_text(json.dumps(dict.fromkeys(("eos_token", "bos_token", "unk_token"), "<|endoftext|>")))
    return directory


def peer(args: list[str], what: str) -> None:
    print(f"[setup] {what}", file=sys.stderr, flush=True)
    subprocess.run([str(PEER_PYTHON), *args], check=True)


def gguf_files(name: str, directory: Path, float32: bool = False) -> dict[str, Path]:
    """Q8_0 and Q4_0 by llama.cpp's own quantizer, from the F32 of its converter (deleted after
    unless float32 asks for it too)."""
    out = CACHE / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"{name}-{kind}.gguf" for kind in ("F32", "Q8_0", "Q4_0")}
    wanted = {kind: path for kind, path in files.items() if kind != "F32" or float32}
    if all(path.is_file() for path in wanted.values()):
        return wanted
    converter = converter_dir()
    if not files["F32"].is_file():
        # The converter knows byte-level GPT-2 BPE only by a hash of one text's token ids, which
        # a vocabulary cut to 49,280 rows may change; its pre-tokenizer is GPT-2's all the same.
        peer(["-c", (
            "import runpy, sys\n"
            f"sys.path[:0] = [{str(converter)!r}, {str(converter / 'gguf-py')!r}]\n"
            "import conversion.base as base\n"
            "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'\n"
            f"sys.argv = ['convert_hf_to_gguf.py', {str(directory)!r}, '--outtype', 'f32', '--outfile', {str(files['F32'])!r}]\n"
            f"runpy.run_path({str(converter / 'convert_hf_to_gguf.py')!r}, run_name='__main__')\n"
        )], f"GGUF F32 of {name}")  # fmt: skip
    for kind, ftype in (("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"), ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0")):
        if not files[kind].is_file():
            peer(["-c", (
                "import llama_cpp\n"
                "params = llama_cpp.llama_model_quantize_default_params()\n"
                f"params.ftype = llama_cpp.{ftype}\n"
                f"assert llama_cpp.llama_model_quantize({str(files['F32']).encode()!r}, {str(files[kind]).encode()!r}, params) == 0\n"
            )], f"GGUF {kind} of {name}")  # fmt: skip
    if not float32:
        files["F32"].unlink()
    return wanted


def ctranslate2_dir(name: str, directory: Path) -> Path:
    out = CACHE / "ctranslate2" / f"{name}-int8"
    if not (out / "model.bin").is_file():
        peer(["-m", "ctranslate2.converters.transformers", "--model", str(directory), "--output_dir", str(out),
              "--quantization", "int8", "--force"], f"CTranslate2 int8 of {name}")  # fmt: skip
    return out


# ---------------------------------------------------------------- runners


class Ours:
    def __init__(self, directory: Path, quantization: str, compile: str = "false"):
        load_model(str(directory), device="cpu", quantization=quantization, compile="false")  # fills the disk cache
        self.lm = load_model(str(directory), device="cpu", quantization=quantization, compile=compile)
        self.weight_bytes = weight_bytes_per_token(self.lm.model)

    @torch.inference_mode()
    def measure(self, prompt: list[int], new_tokens: int) -> dict:
        session = Session(self.lm)
        start = time.perf_counter()
        logits, _ = session.prefill(prompt)
        token = int(torch.argmax(logits))
        prefilled = time.perf_counter()
        for _ in range(new_tokens):
            token = int(torch.argmax(session.step(token)))
        done = time.perf_counter()
        return {"prefill_s": prefilled - start, "decode_ms_per_token": (done - prefilled) / new_tokens * 1000}

    def close(self) -> None:
        pass


class Peer:
    """A peer_worker.py process with its model loaded."""

    def __init__(self, engine: str, path: Path, threads: int, extra: str, weight_bytes: float):
        worker = Path(__file__).resolve().parent / "peer_worker.py"
        self.process = subprocess.Popen([str(PEER_PYTHON), str(worker), engine, str(path), str(threads), extra],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert json.loads(self.process.stdout.readline())["ready"]
        self.weight_bytes = weight_bytes

    def measure(self, prompt: list[int], new_tokens: int) -> dict:
        self.process.stdin.write(json.dumps({"prompt": prompt, "new_tokens": new_tokens}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


@dataclass
class Figures:
    prefill_tokens_per_s: dict[int, list[float]] = field(default_factory=dict)
    decode_ms: dict[int, list[float]] = field(default_factory=dict)
    load: dict[int, list[float]] = field(default_factory=dict)


def read_bandwidth_gb_s() -> float:
    """Reading 2 GB with torch's threads: what a decode step that reads every weight can reach."""
    data = bandwidth_buffer()
    data.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.nbytes / statistics.median(times) / 1e9


def linear_weights(directory: Path) -> int:
    """Weights of the linear layers (LM head included): what every format reads per token."""
    lm = load_model(str(directory), device="cpu")
    return sum(m.weight.numel() for m in lm.model.modules() if isinstance(m, torch.nn.Linear))


def run(name: str, contexts: list[int], rounds: int, new_tokens: int, threads: int, bandwidth: float, layers: int | None,
        compiled: bool, float32: bool) -> None:
    name, config = keep_layers(name, MODELS[name], layers)
    directory = peers_checkpoint(name, config)
    n_linear = linear_weights(directory)
    runners: dict[str, object] = {"ours int8": Ours(directory, "int8"), "ours int4 (g32)": Ours(directory, "int4")}
    if float32:
        runners["ours float32"] = Ours(directory, "none")
    if compiled:
        runners["ours int8 compiled"] = Ours(directory, "int8", compile="true")
        runners["ours int4 (g32) compiled"] = Ours(directory, "int4", compile="true")
    if config["model_type"] in CTRANSLATE2_TYPES:
        runners["CTranslate2 int8"] = Peer("ctranslate2", ctranslate2_dir(name, directory), threads, "int8",
                                           n_linear * BITS["CTranslate2 int8"] / 8)  # fmt: skip
    if config["model_type"] in LLAMA_CPP_TYPES:
        context = max(contexts) + new_tokens + 8
        for kind, path in gguf_files(name, directory, float32).items():
            runners[f"llama.cpp {kind}"] = Peer("llama.cpp", path, threads, str(context), n_linear * BITS[f"llama.cpp {kind}"] / 8)
    tokenizer = runners["ours int8"].lm.tokenizer
    code = tokenizer.encode(real_code(40 * max(contexts)))
    figures = {runner: Figures() for runner in runners}
    for round_ in range(rounds):
        order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        for context in contexts:
            prompt = code[:context]
            for runner in order:
                result = runners[runner].measure(prompt, new_tokens)
                f = figures[runner]
                f.prefill_tokens_per_s.setdefault(context, []).append(len(prompt) / result["prefill_s"])
                f.decode_ms.setdefault(context, []).append(result["decode_ms_per_token"])
                f.load.setdefault(context, []).append(os.getloadavg()[0])
        print(f"[{name}] round {round_ + 1}/{rounds} done", file=sys.stderr, flush=True)
    for runner in runners.values():
        runner.close()

    first = contexts[0]
    header = [f"decode ms/token @{c} (roofline %)" for c in contexts] + [f"prefill tok/s @{first}", "weights MB/token", "load"]
    print(f"\n### {name} shape, {threads} threads, median of {rounds} interleaved rounds, {new_tokens} new tokens\n")
    print("| | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for runner, f in figures.items():
        weight_bytes = runners[runner].weight_bytes
        cells = []
        for c in contexts:
            ms = statistics.median(f.decode_ms[c])
            roofline = 100 * weight_bytes / (ms / 1000) / (bandwidth * 1e9)
            cells.append(f"{ms:.1f} ({roofline:.0f} %)")
        cells.append(f"{statistics.median(f.prefill_tokens_per_s[first]):.1f}")
        cells.append(f"{weight_bytes / 1e6:.0f}")
        cells.append(f"{statistics.median(sum(f.load.values(), [])):.2f}")
        print(f"| {runner} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the peers' environment and exit")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 1500])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, help="keep only this many blocks (StarCoder2-3B on a 24 GB machine: 10)")
    parser.add_argument("--compiled", action="store_true", help="also ours with compile = true")
    parser.add_argument("--float32", action="store_true", help="also ours in float32 and llama.cpp's F32 (4 x the memory)")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    converter_dir()  # fail early, with the command to run, when there is no peers' environment
    torch.set_num_threads(args.threads)
    bandwidth = read_bandwidth_gb_s()
    print(f"{cpu_kernels.machine_key()['cpu']}, {os.cpu_count()} CPUs, read bandwidth {bandwidth:.1f} GB/s ({args.threads} threads), "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    for name in args.models:
        run(name, args.contexts, args.rounds, args.new_tokens, args.threads, bandwidth, args.layers, args.compiled, args.float32)


if __name__ == "__main__":
    main()
