"""CPU decode kernels of quantized layers: each candidate per layer shape, then whole-model decode.

    .venv/bin/python -m benchmarks.cpu_kernels [--models santacoder codegen-350M-mono]
        [--modes int8 int4] [--rounds 7] [--new-tokens 32] [--no-layers] [--no-end-to-end] [--no-others]

Per layer shape of each model (random weights, one token): microseconds per call of the kernels
the load-time choice compares on this CPU (engine/cpu_kernels.py; ours in every instruction set,
the portable build included), the GB/s of weights each reads, and that as a fraction of the
machine's read bandwidth, measured in the same rounds (a torch sum over 2 GB), and of a cold torch
sum of the size our kernel reads (for small layers, each call's start-up weighs: a 1 MB sum reaches
about 65 % of the 2 GB one). Each kernel cycles through copies of the layer (256 MB in all), so
weights come from memory, as in decode.
Then decode ms/token of random-weight checkpoints of both shapes (written once under
/tmp/codegen-lsp-bench; santacoder needs ~4.5 GB of disk and RAM as float32) with the kernels
chosen at load against PyTorch's packed kernels (int8pack / int4pack, the path before ours).

Beside them, the issue's other candidates, which the load-time choice leaves out (slower on every
shape measured): PyTorch's packed kernels with float32 activations, FBGEMM's dynamic int8 linear
(`quantized.linear_dynamic`, x rounded to 7-bit bytes with one scale for the whole call) and inductor's weight-only int8 matmul
(torch.compile, max-autotune, freezing: one compiled layer, so its weights stay in the CPU's
caches, "(in cache)"; each shape compiles for ~5-10 s).

The CPU may be shared: candidates are timed in interleaved rounds (A, B, C, A, B, C, ...) and
the median of each is printed, with the load average beside it.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import time

import torch

from benchmarks.common import bandwidth_buffer, checkpoint, cpu_flags
from benchmarks.random_checkpoint import SHAPES
from engine import cpu_kernels
from engine.loading import load_model
from engine.bench import bench_prompt
from engine.quantize import weight_bytes_per_token
from engine.paths import cache_dir
from engine.quantize import Int4Linear, Int8Linear, QuantSettings, quantize_model
from engine.session import Session

MODELS = {name: SHAPES[name] for name in ("santacoder", "codegen-350M-mono")}
OLD_PATH = {"int8": "int8pack", "int4": "int4pack"}  # PyTorch's packed kernels, bfloat16 activations
COLD_BYTES = 256 * 2**20  # weights cycled through per kernel: well past any L3 cache


def layer_shapes(config: dict) -> list[tuple[str, int, int]]:
    """(name, in, out) of each distinct linear layer of a model config."""
    d, inner = config["n_embd"], config.get("n_inner") or 4 * config["n_embd"]
    if config["model_type"] == "gpt_bigcode":  # multi-query: one key and one value head
        qkv = d + 2 * d // config["n_head"] if config.get("multi_query") else 3 * d
    else:
        qkv = 3 * d
    return [("qkv", d, qkv), ("attn out", d, d), ("mlp in", d, inner), ("mlp out", inner, d), ("lm_head", d, config["vocab_size"])]


def load_average() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def cold_copies(layer, kernel: str) -> list:
    """Twins of layer set up for kernel, each with its own copy of the weights, COLD_BYTES in all:
    calling them in turn reads weights from memory, as decode does, not from the CPU's caches."""
    count = -(-COLD_BYTES // layer.checkpoint_weight().nbytes)
    copies = []
    for _ in range(count):
        twin = layer.with_kernel("dequantize")  # shares the weights, then gets its own
        twin.weight = twin.weight.clone()
        twin.prepare(kernel)
        copies.append(twin)
    return copies


def other_candidates(layer, x: torch.Tensor) -> dict[str, tuple[list, object]]:
    """The issue's candidates outside the load-time choice: name -> (copies of the layer's weights as
    the call takes them, COLD_BYTES in all, or one; the call on one copy)."""
    count = -(-COLD_BYTES // layer.checkpoint_weight().nbytes)
    others = {}
    if isinstance(layer, Int8Linear):
        weight, scales = layer.checkpoint_weight(), layer.scales
        if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            others["int8pack f32 x"] = ([weight.clone() for _ in range(count)],
                                        lambda w: torch.ops.aten._weight_int8pack_mm(x, w, scales))
        if "fbgemm" in torch.backends.quantized.supported_engines:
            zeros = torch.zeros(len(scales), dtype=torch.long)
            quantized = torch.quantize_per_channel(weight.float() * scales[:, None], scales.double(), zeros, 0, torch.qint8)
            others["fbgemm dynamic"] = ([torch.ops.quantized.linear_prepack(quantized, None) for _ in range(count)],
                                        lambda packed: torch.ops.quantized.linear_dynamic(x, packed, True))
        others["inductor (in cache)"] = ([inductor_woq(weight, scales, x)], lambda compiled: compiled(x))
    elif hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        others["int4pack f32 x"] = (cold_copies(layer, "int4pack"), lambda twin: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, twin.packed, twin.group_size, twin.kernel_scales_and_zeros.float()))
    return others


def inductor_woq(weight: torch.Tensor, scales: torch.Tensor, x: torch.Tensor):
    """y = x (weight as float)^T * scales, compiled by inductor with max-autotune and freezing (its
    weight-only int8 matmul: a GEMM template chosen by benchmarking)."""
    import torch._inductor.config as inductor_config

    class WeightOnlyInt8(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
            self.scales = torch.nn.Parameter(scales.clone(), requires_grad=False)

        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight.to(x.dtype)) * self.scales

    torch._dynamo.reset()  # each shape compiles the same forward: past the recompile limit dynamo runs it eagerly
    compiled = torch.compile(WeightOnlyInt8().eval(), mode="max-autotune")

    @torch.no_grad()  # as compiled: freezing takes no-grad calls, and another grad mode compiles again
    def call(x):
        return compiled(x)

    with inductor_config.patch(freezing=True):  # the first call compiles
        call(x)
    return call


def bench_layers(model: str, mode: str, rounds: int, others: bool) -> None:
    config = MODELS[model]
    big = bandwidth_buffer()  # 2 GB of float32
    for name, k, n in layer_shapes(config):
        layer = quantize_model(torch.nn.Sequential(torch.nn.Linear(k, n)), QuantSettings(mode))[0]
        x = torch.randn(1, k)
        candidates = layer.kernel_candidates()
        start = time.perf_counter()
        choice = cpu_kernels.measure(layer, candidates)
        choice_seconds = time.perf_counter() - start
        # What the choice times (all but the last, the fallback), and ours in every instruction set.
        ours = layer.our_kernels(torch.ops.codegen_lsp_cpu.isas().split()) if candidates[0].startswith("cpp-") else []
        kernels = ours + [kernel for kernel in candidates[:-1] if not kernel.startswith("cpp-")]
        copies = {kernel: cold_copies(layer, kernel) for kernel in kernels}
        calls = {kernel: (lambda turn=itertools.cycle(twins): next(turn)(x)) for kernel, twins in copies.items()}
        extra = other_candidates(layer, x) if others else {}
        for kernel, (weights, call) in extra.items():
            calls[kernel] = lambda turn=itertools.cycle(weights), call=call: call(next(turn))
        calls["read bandwidth"] = big.sum
        # A torch sum over float32 tensors of the size our kernel reads, cold too: what one call of
        # that size can stream at best (each call's start costs, as it does the kernels').
        same_size = weight_bytes_per_token(copies[kernels[0]][0])
        tensors = [torch.ones(same_size // 4) for _ in range(-(-COLD_BYTES // same_size))]
        calls["same-size read"] = lambda turn=itertools.cycle(tensors): next(turn).sum()
        seconds = cpu_kernels.median_seconds_per_call(calls, rounds=rounds, round_seconds=0.05)
        bandwidth = big.nbytes / seconds.pop("read bandwidth") / 1e9
        same_size_bandwidth = same_size / seconds.pop("same-size read") / 1e9
        print(f"\n{model} {mode} {name} {k}->{n}: read bandwidth {bandwidth:.1f} GB/s ({same_size / 2**20:.1f} MB reads: "
              f"{same_size_bandwidth:.1f} GB/s), {load_average()}; chosen at load: {choice} ({choice_seconds * 1000:.0f} ms to choose)")
        print(f"  {'kernel':<18}{'us/call':>10}{'GB/s':>8}{'of bw':>8}{'of same-size read':>20}")
        for kernel, s in seconds.items():
            gb = weight_bytes_per_token(copies[kernel][0] if kernel in copies else layer) / s / 1e9
            print(f"  {kernel:<18}{s * 1e6:>10.1f}{gb:>8.1f}{100 * gb / bandwidth:>7.0f}%{100 * gb / same_size_bandwidth:>19.0f}%")
        del layer, copies, calls, tensors, extra
        gc.collect()


def bench_decode(model: str, mode: str, rounds: int, new_tokens: int) -> None:
    """Decode ms/token with the kernels chosen at load and with PyTorch's packed ones, interleaved."""
    directory = checkpoint(model, MODELS[model])
    chosen = load_model(str(directory), device="cpu", quantization=mode)  # the first load quantizes and chooses
    old = load_model(str(directory), device="cpu", quantization=mode)
    for module in old.model.modules():
        if isinstance(module, (Int8Linear, Int4Linear)):
            module.prepare(OLD_PATH[mode])
    prompt = bench_prompt(chosen, 64)
    picked = sorted({m.kernel for m in chosen.model.modules() if isinstance(m, (Int8Linear, Int4Linear))})

    def decode(lm):
        session = Session(lm)
        logits, _ = session.prefill(prompt)
        token = int(torch.argmax(logits))
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(torch.argmax(session.step(token)))
        return (time.perf_counter() - start) / new_tokens

    big = bandwidth_buffer()  # 2 GB of float32: the read bandwidth, in the same rounds
    decode(chosen), decode(old)  # warm-up
    times = {"chosen": [], "old": [], "bandwidth": []}
    for _ in range(rounds):
        times["chosen"].append(decode(chosen))
        times["old"].append(decode(old))
        start = time.perf_counter()
        big.sum()
        times["bandwidth"].append(big.nbytes / (time.perf_counter() - start) / 1e9)
    bandwidth = statistics.median(times["bandwidth"])
    print(f"\n{model} {mode} decode, {len(prompt)}-token prompt, {new_tokens} tokens, median of {rounds} rounds, "
          f"read bandwidth {bandwidth:.1f} GB/s, {load_average()}")
    for name, lm, kernels in (("chosen", chosen, ", ".join(picked)), ("old", old, f"{OLD_PATH[mode]}, before")):
        seconds = statistics.median(times[name])
        weights = weight_bytes_per_token(lm.model)
        print(f"  {kernels:<22}{seconds * 1000:7.1f} ms/token  {weights / 2**20:5.0f} MB of weights per token  "
              f"{weights / seconds / 1e9:5.1f} GB/s ({100 * weights / seconds / 1e9 / bandwidth:.0f} % of read bandwidth)")
    print(f"  chosen: {statistics.median(times['old']) / statistics.median(times['chosen']):.2f}x as fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["int8", "int4"], choices=["int8", "int4"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--no-layers", action="store_true")
    parser.add_argument("--no-end-to-end", action="store_true")
    parser.add_argument("--no-others", action="store_true", help="leave out the candidates the load-time choice does not time")
    args = parser.parse_args()
    key = cpu_kernels.machine_key()
    ours = cpu_kernels.compiled_kernels(cache_dir() / "kernels")
    print(f"CPU {key['cpu']} ({', '.join(cpu_features())}), torch {key['torch']}, {key['threads']} threads; "
          f"our kernels: {', '.join(ours) or 'not built'}")
    if not args.no_layers:
        for model in args.models:
            for mode in args.modes:
                bench_layers(model, mode, args.rounds, not args.no_others)
    if not args.no_end_to_end:
        for model in args.models:
            for mode in args.modes:
                bench_decode(model, mode, args.rounds, args.new_tokens)


def cpu_features() -> list[str]:
    flags = cpu_flags()
    return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags]


if __name__ == "__main__":
    main()
