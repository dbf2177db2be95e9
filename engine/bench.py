"""Speed of one loaded model: prefill tokens/s, decode ms/token, memory, bandwidth.

Used by `codegen-lsp bench` and the benchmarks/ scripts. Decode at batch size
1 is bound by reading every weight once per token, so on CUDA the achieved
GB/s of weights read per token, against what the device can copy, says how
close decode is to its roofline.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from engine.loaded_model import LoadedModel
from engine.quantize import weight_bytes_per_token
from engine.session import Session


@dataclass
class BenchResult:
    load_seconds: float
    prompt_tokens: int
    prefill_tokens_per_second: float
    new_tokens: int
    decode_ms_per_token: float
    peak_memory_mb: float  # CUDA: peak allocated; CPU: peak resident set of the process
    weight_mb_per_token: float  # bytes of weights one decode step reads
    achieved_gb_per_second: float | None = None  # CUDA only: weights read per second of decode
    device_gb_per_second: float | None = None  # CUDA only: measured device-to-device copy bandwidth

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"load               {self.load_seconds:8.2f} s",
            f"prefill            {self.prefill_tokens_per_second:8.1f} tokens/s ({self.prompt_tokens} tokens)",
            f"decode             {self.decode_ms_per_token:8.2f} ms/token ({self.new_tokens} tokens)",
            f"peak memory        {self.peak_memory_mb:8.0f} MB",
            f"weights per token  {self.weight_mb_per_token:8.0f} MB",
        ]
        if self.achieved_gb_per_second is not None:
            share = f" of {self.device_gb_per_second:.0f} GB/s measured copy bandwidth" if self.device_gb_per_second else ""
            roofline = (f" ({100 * self.achieved_gb_per_second / self.device_gb_per_second:.0f} %)"
                        if self.device_gb_per_second else "")
            out.append(f"weight bandwidth   {self.achieved_gb_per_second:8.0f} GB/s{share}{roofline}")
        return out


def device_copy_gb_per_second(device: torch.device) -> float | None:
    """Bandwidth of a large device-to-device copy (read + write), a practical roofline."""
    if device.type != "cuda":
        return None
    n = 1 << 28  # 256 Mi float32 = 1 GiB each way
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / 10
    del src, dst
    return 2 * n * 4 / seconds / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(lm: LoadedModel, prompt: list[int], new_tokens: int, repeat: int = 3) -> BenchResult:
    """Median prefill of `prompt` into a fresh session, then greedy decode of `new_tokens`, on the
    threads the model's generations take (a small model's one)."""
    lm.use_threads()
    device = lm.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def prefill():
        Session(lm).prefill(prompt)
        _sync(device)

    prefill()  # warm-up: first-call allocations, kernel selection
    prefill_times = []
    for _ in range(repeat):
        start = time.perf_counter()
        prefill()
        prefill_times.append(time.perf_counter() - start)

    decode_times = []
    for _ in range(repeat):
        session = Session(lm)
        logits, _ = session.prefill(prompt)
        token = int(torch.argmax(logits))
        session.step(token)  # warm-up step outside the timing
        _sync(device)
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(torch.argmax(session.step(token)))  # argmax reads the logits: a sync point
        decode_times.append((time.perf_counter() - start) / new_tokens)

    decode = statistics.median(decode_times)
    weights = weight_bytes_per_token(lm.model)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        achieved, roof = weights / decode / 1e9, device_copy_gb_per_second(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        achieved, roof = None, None
    return BenchResult(
        load_seconds=lm.load_seconds,
        prompt_tokens=len(prompt),
        prefill_tokens_per_second=len(prompt) / statistics.median(prefill_times),
        new_tokens=new_tokens,
        decode_ms_per_token=decode * 1000,
        peak_memory_mb=peak,
        weight_mb_per_token=weights / 2**20,
        achieved_gb_per_second=achieved,
        device_gb_per_second=roof,
    )


def bench_prompt(lm: LoadedModel, tokens: int) -> list[int]:
    """`tokens` ids spread over the vocabulary: prefill and decode take the same time whatever the ids."""
    allowed = min(lm.tokenizer.vocab_size, lm.config.vocab_size)
    return [(i * 7919) % allowed for i in range(tokens)]
