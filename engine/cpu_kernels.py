"""CPU decode kernels for quantized and float32 layers: building ours, and choosing the fastest per layer shape.

engine/kernels/cpu_matvec.cpp holds int8, int4 and float32 matrix-vector kernels for decode (its header
says how they work). It is compiled at first use with torch.utils.cpp_extension, once per machine,
torch version and source, and the library is kept in the cache folder. Where it cannot be built
(no compiler, no ninja) one log line says so and PyTorch's kernels run instead.

The fastest kernel depends on the CPU (AVX2 or AVX-512, memory, threads), so the first load of a
quantized or float32 model on a CPU times the kernels available for each distinct layer shape on one layer
of that shape, and the fastest whose output matches a float32 reference serves every layer of
that shape. Choices are saved in cpu-kernels.json beside the quantized weights, keyed by CPU model
and flags, torch version, kernel source, whether ours could be built, and thread count: a change
in any means measuring again.

Decode attention (one token over a float32 cache) is chosen the same way, per (kv heads, query
heads per kv head, head dim): ours or PyTorch's SDPA (choose_attention); and prefill attention
(a chunk of tokens over the cache) per shape and cache dtype (choose_prefill_attention).

A quantized module (engine/quantize.py) or a FloatLinear (engine/float_linear.py) takes part
through its methods kernel_candidates() (names, fallback last), with_kernel(name) (a twin sharing
its weights, set up for that kernel), prepare(name), shape_key() and reference(x, rows) (the
float32 result of those output rows).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from engine import config
from engine.kv_cache import HALF
from engine.paths import cache_dir
from engine.session import PREFILL_CHUNK
from engine.speculative import FIRST_DRAFT

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "kernels" / "cpu_matvec.cpp"
# -fopenmp: at::parallel_for is inline OpenMP code, serial without it; the library then shares
# torch's own libgomp (same soname, already loaded), so torch.set_num_threads applies.
# Tuples: cpp_extension.load appends to the lists it is given, which changed source_digest() within
# the process that built, so its choices were saved under a key no later process has.
COMPILER_FLAGS = ("-O3", "-ffp-contract=fast", "-Wno-psabi") + (("-fopenmp",) if sys.platform == "linux" else ())
LINKER_FLAGS = ("-fopenmp",) if sys.platform == "linux" else ()
CHOICES_FILE = "cpu-kernels.json"
STALE_BUILD_DAYS = 30  # a kernel build no process loaded for this long is deleted (remove_stale_builds)
# A candidate passes when max |y - reference| <= TOLERANCE * max |reference| on random input:
# float32 and 16-bit activations are near 1e-5, bfloat16 activations (PyTorch's packed kernels)
# near 5e-3, a wrong layout or scale near 1.
TOLERANCE = 3e-2
ROUNDS = 5  # timing rounds, candidates interleaved, median taken
# A layer's kernels are timed on one token (a decode step) plus this many (a speculative verify of a
# first draft: its last token and the drafts). Reading weights from memory, kernels tie on one token
# whose arithmetic differs by half (our int8 ones with float or int16 activations), and a verify's
# rows are what tells them apart.
VERIFY_TOKENS = FIRST_DRAFT + 1
ROUND_SECONDS = 2e-3  # calls per round: as many as fill this time, at least one

_build_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried in this process yet


def source_digest() -> str:
    """What identifies a build of the kernels: their source and flags."""
    return hashlib.sha256(SOURCE.read_bytes() + " ".join(COMPILER_FLAGS + LINKER_FLAGS).encode()).hexdigest()[:16]


def load_kernels(folder: Path) -> bool:
    """Whether torch.ops.codegen_lsp_cpu is usable, building it into folder the first time on a machine."""
    global _loaded
    with _build_lock:  # one build per process, whichever thread asks first
        if _loaded is None:
            _loaded = _load(Path(folder))
        return _loaded


def library_path(folder: Path) -> Path:
    """Where folder keeps the build of this source for this machine, Python and torch."""
    version = f"{platform.machine()}-py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{source_digest()}"
    return Path(folder) / f"cpu_matvec-{version}.so"


def _load(folder: Path) -> bool:
    try:
        library = library_path(folder)
        if library.is_file():
            torch.ops.load_library(str(library))
        else:
            log.info("building the CPU decode kernels (once per machine and torch version): %s", library)
            _build(library)
        remove_stale_builds(folder, library)
    except Exception as exc:  # no compiler, no ninja, a compile error, an unwritable cache...
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("CPU decode kernels unavailable, using PyTorch's instead: %s", message[:300])
        return False
    # Output shapes for torch.compile, which traces the ops without running them.
    for op in ("int8_matvec", "int8_matvec_i16", "int8_matmul"):
        torch.library.register_fake(f"codegen_lsp_cpu::{op}")(
            lambda x, weight, scales, bias, isa: x.new_empty(*x.shape[:-1], scales.shape[0]))
    for op in ("int4_matvec", "int4_matvec_i8", "int4_matmul"):
        torch.library.register_fake(f"codegen_lsp_cpu::{op}")(
            lambda x, weight, out_features, group_size, bias, isa: x.new_empty(*x.shape[:-1], out_features))
    torch.library.register_fake("codegen_lsp_cpu::float_matvec")(
        lambda x, weight, bias, isa: x.new_empty(*x.shape[:-1], weight.shape[0]))
    torch.library.register_fake("codegen_lsp_cpu::attend_decode")(lambda q, k, v, scale, isa: q.new_empty(q.shape))
    config.CPU_OPS_ISA = torch.ops.codegen_lsp_cpu.isas().split()[0]  # the best this CPU runs
    return True


def remove_stale_builds(folder: Path, used: Path) -> None:
    """Mark `used` as loaded now, and delete the builds no process has loaded for STALE_BUILD_DAYS
    (each change of the source or of torch leaves one behind, ~200 KB). Another checkout or
    version in use on the machine keeps its build: loading marks it too."""
    try:
        os.utime(used)
        cutoff = time.time() - STALE_BUILD_DAYS * 86400
        for build in folder.glob("cpu_matvec-*"):  # libraries, and copies a killed build left
            if build != used and build.stat().st_mtime < cutoff:
                build.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or shared cache: the files stay, nothing else changes
        log.debug("old kernel builds left in %s: %s", folder, exc)


def _build(library: Path) -> None:
    """Compile in a private folder (a killed build leaves no lock behind), then publish the library
    under its final name in one rename; the build also loads it into this process."""
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja package's binary, when the venv is not on PATH
        try:
            import ninja

            os.environ["PATH"] += os.pathsep + ninja.BIN_DIR
        except ImportError:
            pass
    library.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its compiler warnings would be more lines than the one we log
    try:
        with tempfile.TemporaryDirectory(dir=library.parent, prefix="build-") as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = cpp_extension.load(
                "codegen_lsp_cpu_matvec", [str(SOURCE)], extra_cflags=list(COMPILER_FLAGS), extra_ldflags=list(LINKER_FLAGS),
                build_directory=scratch, is_python_module=False, verbose=False,
            )
            partial = library.with_name(f"{library.name}.{os.getpid()}.partial")
            shutil.copyfile(built, partial)
            os.replace(partial, library)
    finally:
        quiet.setLevel(level)


# ---------------------------------------------------------------- choosing per layer shape


def compiled_kernels(folder: Path) -> list[str]:
    """Our kernels this CPU runs, as candidate names ("cpp-avx2"...), best instruction set first;
    the portable build only where no SIMD one runs (elsewhere it is many times slower)."""
    if not load_kernels(folder):
        return []
    isas = torch.ops.codegen_lsp_cpu.isas().split()
    return [f"cpp-{isa}" for isa in (isas[:-1] or isas)]


def product_isa(folder: Path) -> str:
    """The instruction set of our prefill products: the best this CPU runs. Not timed, unlike the
    decode kernels: those read weights at the memory's speed in any of them (AVX-512 and AVX2 tie,
    so either may be chosen), while products are bound by arithmetic, and VNNI's do twice AVX2's.
    "amx" where AMX tiles run: AVX-512's kernels with an int8 product of the same numbers in tiles."""
    isa = compiled_kernels(folder)[0].removeprefix("cpp-")
    return "amx" if isa == "avx512" and torch.ops.codegen_lsp_cpu.amx() else isa


def cpu_fields() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "flags"...; none where it is absent)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def machine_key() -> dict:
    """What the speed of a kernel depends on, besides the layer's shape."""
    fields = cpu_fields()
    model = fields.get("model name") or fields.get("Hardware") or platform.processor() or platform.machine()
    flags = fields.get("flags") or fields.get("Features") or ""
    return {
        "cpu": model,
        "cpu_flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "machine": platform.machine(),
        "torch": torch.__version__,
        "kernel_source": source_digest(),
        # Whether ours are built here (their file: asking builds nothing): choices made without them
        # (no compiler) are not kept once they can run, nor the other way round.
        "our_kernels": library_path(cache_dir() / "kernels").is_file(),
        "threads": default_threads(),
        "timed_tokens": [1, VERIFY_TOKENS],  # what measure() times: choices timed otherwise are not kept
    }


def choose_kernels(modules: list[nn.Module], folder: Path) -> None:
    """Give every module the fastest correct kernel for its shape: from folder/cpu-kernels.json when
    it was measured on this machine, else by measuring now (and saving the choice)."""
    if not modules:
        return
    by_shape: dict[str, list[nn.Module]] = {}
    for module in modules:
        by_shape.setdefault(module.shape_key(), []).append(module)
    # The candidates first: they build ours at a machine's first load, which the key records.
    candidates_of = {shape: same[0].kernel_candidates() for shape, same in by_shape.items()}
    path, key, choices = _saved_choices(folder)
    changed = False
    for shape, same in by_shape.items():
        candidates = candidates_of[shape]
        choice = choices.get(shape)
        if choice not in candidates:  # not measured here yet, or no longer available
            choice = measure(same[0], candidates)
            choices[shape] = choice
            changed = True
        for module in same:
            module.prepare(choice)
    log.info("CPU decode kernels: %s", ", ".join(f"{shape}: {choices[shape]}" for shape in by_shape))
    if changed:
        _save_choices(path, key, choices, "kernel")


@torch.no_grad()
def measure(module: nn.Module, candidates: list[str]) -> str:
    """The fastest of candidates on this layer (one token and a verify's VERIFY_TOKENS, together) whose
    output matches its float32 reference. The last candidate is the fallback: chosen when no other
    passes, and timed beside the others only where the module says TIMED_FALLBACK (dequantizing a
    large layer for every call takes long)."""
    timed, fallback = (candidates if getattr(module, "TIMED_FALLBACK", False) else candidates[:-1]), candidates[-1]
    x = torch.randn(1, module.in_features, generator=torch.Generator().manual_seed(0))
    verify_x = torch.randn(VERIFY_TOKENS, module.in_features, generator=torch.Generator().manual_seed(1))
    # Every output row would cost a float copy of the layer: 256 spread rows and the last 16 (the
    # edge of the kernels' row blocks) catch a wrong layout, scale or tail.
    rows = torch.unique(torch.cat([torch.linspace(0, module.out_features - 1, 256).long(),
                                   torch.arange(max(0, module.out_features - 16), module.out_features)]))
    reference = module.reference(x, rows)
    passed = {}
    for name in timed:
        try:
            twin = module.with_kernel(name)
            error = (twin(x)[:, rows].float() - reference).abs().max().item() / max(reference.abs().max().item(), 1e-30)
        except Exception as exc:
            log.warning("CPU kernel %s failed on %s, not used: %s", name, module.shape_key(), exc)
            continue
        if error <= TOLERANCE:
            passed[name] = twin
        else:
            log.warning("CPU kernel %s is wrong on %s (relative error %.2g), not used", name, module.shape_key(), error)
    if len(passed) < 2:
        return next(iter(passed), fallback)
    seconds = median_seconds_per_call({name: lambda twin=twin: (twin(x), twin(verify_x)) for name, twin in passed.items()})
    return min(seconds, key=seconds.get)


def choose_attention(kv_heads: int, group: int, head_dim: int, folder: Path) -> str | None:
    """The instruction set our decode attention kernel runs with for this shape, followed by
    kv_cache.HALF where it is fastest over a float16 copy of a float32 cache ("avx2 float16"), or
    None where PyTorch's SDPA is as fast or ours is unavailable: measured once per machine on a
    1,024-key cache, saved with the kernel choices."""
    names = compiled_kernels(folder)
    if not names or head_dim % 32:
        return None
    shape = f"attention {kv_heads}x{group}x{head_dim}"
    candidates = [*names, *(name + HALF for name in names), "sdpa"]
    choice = _saved_or_measured(folder, shape, candidates, lambda: _measure_attention(kv_heads, group, head_dim, names))
    log.info("CPU decode attention for %s: %s", shape, choice)
    return None if choice == "sdpa" else choice.removeprefix("cpp-")


ATTENTION_KEYS = 1024  # the cache length the choice is measured at
ATTENTION_CACHE_BYTES = 64 << 20  # cycled through, as the layers of a model are: read from memory


def _matches(what: str, outputs: Callable[[], list[torch.Tensor]], references: list[torch.Tensor]) -> bool:
    """Whether a candidate attention kernel's outputs are within 1e-4 of the references (relative to
    each reference's largest number); if not, or if it fails, one log line says so."""
    try:
        error = max(((out - reference).abs().max() / reference.abs().max()).item() for out, reference in zip(outputs(), references))
    except Exception as exc:
        log.warning("%s failed, not used: %s", what, exc)
        return False
    if error > 1e-4:
        log.warning("%s is wrong (relative error %.2g), not used", what, error)
    return error <= 1e-4


@torch.no_grad()
def _measure_attention(kv_heads: int, group: int, head_dim: int, names: list[str]) -> str:
    """The fastest of SDPA (as engine/kv_cache.attend runs it) and ours over a float32 and over a
    float16 cache, one step over ATTENTION_KEYS cached keys, ours only where it matches SDPA (over
    the same float16 numbers for the float16 cache). Each call reads another layer's keys and values
    from memory, as decode does: in the CPU's caches, the ranking differs."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(kv_heads, group, head_dim, generator=generator)

    def layers(dtype: torch.dtype) -> list[torch.Tensor]:  # ATTENTION_CACHE_BYTES of them, so read from memory
        layer_bytes = 2 * kv_heads * ATTENTION_KEYS * head_dim * dtype.itemsize
        return [torch.randn(2, kv_heads, ATTENTION_KEYS + 64, head_dim, generator=generator)[:, :, :ATTENTION_KEYS].to(dtype)
                for _ in range(-(-ATTENTION_CACHE_BYTES // layer_bytes))]  # fmt: skip

    caches, halves = layers(torch.float32), layers(torch.float16)
    scale = head_dim**-0.5

    def sdpa(cache):
        return torch.nn.functional.scaled_dot_product_attention(q[None], cache[0][None], cache[1][None], scale=scale)[0]

    def ours(cache, isa):
        return torch.ops.codegen_lsp_cpu.attend_decode(q, cache[0], cache[1], scale, isa)

    turns, half_turns = itertools.cycle(caches), itertools.cycle(halves)
    calls = {"sdpa": lambda: sdpa(next(turns))}
    reference, half_reference = sdpa(caches[0]), sdpa(halves[0].float())
    for name in names:
        isa = name.removeprefix("cpp-")
        variants = ((name, caches[0], reference, turns), (name + HALF, halves[0], half_reference, half_turns))
        for label, first, expected, cycle in variants:
            if _matches(f"CPU decode attention {label}", lambda first=first: [ours(first, isa)], [expected]):
                calls[label] = lambda isa=isa, cycle=cycle: ours(next(cycle), isa)
    seconds = median_seconds_per_call(calls, round_seconds=0.02)
    return min(seconds, key=seconds.get)


def choose_prefill_attention(kv_heads: int, group: int, head_dim: int, cache_dtype: torch.dtype, folder: Path) -> str | None:
    """The instruction set our prefill attention kernel runs with for this shape over a cache of
    cache_dtype, or None where PyTorch's SDPA is as fast or ours is unavailable: measured once per
    machine on prefill chunks after PREFILL_CACHED tokens, saved with the kernel choices."""
    names = compiled_kernels(folder)
    if not names or head_dim % 16:
        return None
    shape = f"prefill attention {kv_heads}x{group}x{head_dim} {str(cache_dtype).removeprefix('torch.')}"
    choice = _saved_or_measured(folder, shape, [*names, "sdpa"],
                                lambda: _measure_prefill_attention(kv_heads, group, head_dim, cache_dtype, names))
    log.info("CPU prefill attention for %s: %s", shape, choice)
    return None if choice == "sdpa" else choice.removeprefix("cpp-")


PREFILL_CACHED = (256, 1280)  # after this many cached tokens, both: which is faster can change with the keys


@torch.no_grad()
def _measure_prefill_attention(kv_heads: int, group: int, head_dim: int, cache_dtype: torch.dtype, names: list[str]) -> str:
    """The fastest of SDPA (as engine/kv_cache.attend runs it for a prefill chunk: a boolean mask,
    the cache cast to float32) and ours over a chunk of PREFILL_CHUNK new tokens after each count of
    PREFILL_CACHED tokens (their sum: the AVX2 build against AVX2 SDPA, santacoder's shape, was 1.3x
    SDPA's speed after 256 cached tokens and 0.94x after 1,280), ours only where it matches SDPA."""
    generator = torch.Generator().manual_seed(0)
    T, H, scale = PREFILL_CHUNK, kv_heads * group, head_dim**-0.5
    q = torch.randn(1, T, H, head_dim, generator=generator).transpose(1, 2)  # as the architectures give it
    chunks = []  # (k, v, mask) after each count of cached tokens
    for cached in PREFILL_CACHED:
        k, v = (torch.randn(1, kv_heads, cached + T, head_dim, generator=generator).to(cache_dtype) for _ in range(2))
        chunks.append((k, v, torch.arange(cached + T)[None, :] <= torch.arange(cached, cached + T)[:, None]))

    def sdpa():
        return [torch.nn.functional.scaled_dot_product_attention(q, k.float(), v.float(), attn_mask=mask, scale=scale, enable_gqa=group > 1)
                for k, v, mask in chunks]

    def ours(isa: str):
        return [torch.ops.codegen_lsp_cpu.attend_prefill(q, k, v, scale, isa) for k, v, _ in chunks]

    references = sdpa()
    calls = {"sdpa": sdpa}
    for name in names:
        isa = name.removeprefix("cpp-")
        if _matches(f"CPU prefill attention {name}", lambda: ours(isa), references):
            calls[name] = lambda isa=isa: ours(isa)
    seconds = median_seconds_per_call(calls)
    return min(seconds, key=seconds.get)


@functools.cache
def default_threads() -> int:
    """torch's thread count before any generation changed it (generate() sets it per model)."""
    return torch.get_num_threads()


@contextlib.contextmanager
def default_threads_after():
    """torch's thread count back to default_threads() when the block ends, however it ends (a
    measurement sets its own counts inside)."""
    try:
        yield
    finally:
        torch.set_num_threads(default_threads())


# Models that read at most this many bytes of weights per decode step generate on one thread.
SMALL_MODEL_BYTES = 64 << 20


def threads_for(weight_bytes: int) -> int:
    """How many threads a model's generations run with: one for a small model, all of torch's for
    the others (bound by memory bandwidth, which one thread does not reach).

    A small model's step is many small ops, and each op with two threads is a meeting of both, the
    waiting one spinning. In the server, after the pause between keystrokes and beside the event
    loop and the editor, whole requests ran with every op ~10x slower. Through the server
    (benchmarks/keystroke_latency.py, Intel Xeon, 2026-12-03) one thread halved keystroke to ghost
    text, p50 and p95, for the demo model and two random small ones, where their decode steps alone,
    back to back, were 1.1-1.5x faster with two threads; so the count is not measured that way (it
    was, until then). benchmarks/README.md ("Threads") has what was tried to keep two."""
    return 1 if weight_bytes <= SMALL_MODEL_BYTES else default_threads()


def choose_drafting(make_calls: Callable[[], tuple[Callable[[], object], Callable[[], object]]], name: str, folder: Path,
                    threads: int, break_even: float) -> bool:
    """Whether speculative decoding pays for a model on this CPU: whether a verify of a first draft
    costs less than `break_even` decode steps (the tokens such a verify decides on average,
    engine/speculative.py). make_calls() gives (one decode step, that verify), made only when it is
    measured; measured once with the model's threads, saved beside the kernel choices under `name`
    and that thread count (a verify's rows weigh differently on one thread than on several).

    On a model whose weights sit in the CPU's caches a verify row costs a fraction of a step; on a
    1B model in int8 or int4, whose kernels' rows are bound by arithmetic, half a step or more, so
    that drafts rejected a third of the time make decoding slower than without them."""

    def measure() -> bool:
        step, verify = make_calls()
        with default_threads_after():
            torch.set_num_threads(threads)
            seconds = median_seconds_per_call({"step": step, "verify": verify}, round_seconds=0.005)
        log.info("a first verify of %s costs %.2f decode steps (it pays below %.2f)", name,
                 seconds["verify"] / seconds["step"], break_even)
        return seconds["verify"] / seconds["step"] < break_even

    choice = _saved_or_measured(folder, f"drafting {name}, {threads} threads", [True, False], measure)
    log.info("speculative drafts by default for %s: %s", name, "on" if choice else "off (a verify costs more than it decides)")
    return choice


def median_seconds_per_call(calls: dict[str, Callable[[], object]], rounds: int = ROUNDS,
                            round_seconds: float = ROUND_SECONDS) -> dict[str, float]:
    """Each function's median seconds per call over interleaved rounds (A, B, C, A, B, C, ...), so
    that another process's load weighs on all of them alike."""
    repeats = {}
    for name, call in calls.items():
        call()  # warm-up
        start = time.perf_counter()
        call()
        repeats[name] = max(1, int(round_seconds / max(time.perf_counter() - start, 1e-9)))
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                call()
            samples[name].append((time.perf_counter() - start) / repeats[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def _saved_choices(folder: Path) -> tuple[Path, dict, dict]:
    """The choices file in folder, this machine's key, and the choices saved under that key (none
    when they were measured elsewhere)."""
    path = Path(folder) / CHOICES_FILE
    key = machine_key()
    saved = _read_choices(path)
    return path, key, (saved.get("choices", {}) if saved.get("key") == key else {})


def _saved_or_measured(folder: Path, name: str, valid: list, measure: Callable[[], object]):
    """The choice saved under `name` for this machine when it is still one of `valid`, else
    measure()'s, saved beside the others."""
    path, key, choices = _saved_choices(folder)
    choice = choices.get(name)
    if choice not in valid:
        choice = choices[name] = measure()
        _save_choices(path, key, choices, name)
    return choice


def _save_choices(path: Path, key: dict, choices: dict, what: str) -> None:
    try:
        _write_choices(path, {"key": key, "choices": choices})
    except OSError as exc:
        log.warning("cannot save the CPU %s choice in %s: %s", what, path, exc)


def _read_choices(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and isinstance(data.get("choices"), dict) else {}
    except (OSError, ValueError):
        return {}


def _write_choices(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(partial, path)
