"""Load a model: find the checkpoint, build our model from it on its device, compile its decode step.

Each step has its module: engine/checkpoint.py (where the checkpoint is),
engine/weights.py (reading its tensors), engine/build.py (our model from them,
quantized or not), engine/device.py (device and dtype), engine/compile.py.
No code from a checkpoint is ever run.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from engine import cpu_kernels, huge_pages
from engine.build import build_model, build_quantized_model
from engine.checkpoint import resolve_model_dir
from engine.compile import COMPILE_SETTINGS, compile_decode, want_compile
from engine.config import ModelConfig
from engine.decoder import call_forward_directly, speed_up_attribute_lookups
from engine.device import pick_device, pick_dtype
from engine.errors import EngineError
from engine.float_linear import use_float_kernels
from engine.kv_cache import DECODE_ATTENTION, PREFILL_ATTENTION, KVCache, attention_shape, cache_dtype, set_choice
from engine.loaded_model import LoadedModel
from engine.paths import DEMO_MODEL_DIR, cache_dir
from engine.quantize import QuantSettings, weight_bytes_per_token
from engine.speculative import FIRST_DRAFT, expected_tokens
from engine.tokenizer import load_tokenizer
from engine.weights import read_state_dict

log = logging.getLogger(__name__)


def load_model(
    spec: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "none",
    compile: str = "auto",
    quantize_lm_head: bool = True,
    progress: Callable[[int], None] = lambda percent: None,
) -> LoadedModel:
    """Load a checkpoint (the shipped demo model when spec is None or empty).

    quantization: none | int8 | int4 (weight-only, engine/quantize.py);
    compile: auto | true | false (compiled decode, engine/compile.py);
    progress: told the percentage done after each step (from this thread).
    """
    settings = QuantSettings(quantization, lm_head=quantize_lm_head)
    if compile not in COMPILE_SETTINGS:
        raise EngineError(f"unknown compile setting {compile!r} (use {', '.join(COMPILE_SETTINGS)})")
    start = time.perf_counter()
    directory = resolve_model_dir(spec or str(DEMO_MODEL_DIR))
    config = ModelConfig.from_file(directory / "config.json")
    tokenizer = load_tokenizer(directory, eos_token_id=config.eos_token_id)
    tokenizer.spelling(" ", 0)  # builds token healing's index now (~0.1 s for 50k tokens), not at a keystroke
    if tokenizer.vocab_size > config.vocab_size:
        log.warning("%s: its tokenizer has %d tokens and its embedding %d rows; a prompt with the others is refused",
                    directory.name, tokenizer.vocab_size, config.vocab_size)
    progress(10)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if settings.mode == "none":
        model = build_model(config, read_state_dict(directory)).to(device=torch_device, dtype=torch_dtype)
    else:
        model = build_quantized_model(config, directory, settings, torch_dtype, torch_device)
    use_float_kernels(model)  # float32 layers on a CPU: all of them, or those left unquantized (an LM head)
    if torch_device.type == "cpu":
        huge_pages.move_weights(model)  # decode reads them every token: out of the heap, into huge pages
    progress(70)  # the weights read (and quantized); timing attention and drafts, and compiling, is left
    if not want_compile(compile, torch_device):
        speed_up_attribute_lookups(model)
        call_forward_directly(model)
    name = f"{config.model_type} {config.n_layer}x{config.n_embd} {settings.mode} {str(torch_dtype).removeprefix('torch.')}"
    threads = cpu_kernels.threads_for(weight_bytes_per_token(model)) if torch_device.type == "cpu" else None
    # Our attention kernels, where they were measured faster than SDPA for the shape (float32 and
    # quantized layers have built our kernels already): decode's first, which the cache dtype follows.
    attends_in_float32 = torch_device.type == "cpu" and (config.architecture.cache_dtype or torch_dtype) == torch.float32
    shape = attention_shape(config)
    if attends_in_float32:
        set_choice(DECODE_ATTENTION, shape, cpu_kernels.choose_attention(*shape, cache_dir() / "quantized"))
    kv_dtype = cache_dtype(config, torch_dtype, torch_device, quantized=settings.mode != "none")
    if attends_in_float32:
        set_choice(PREFILL_ATTENTION, (*shape, kv_dtype), cpu_kernels.choose_prefill_attention(*shape, kv_dtype, cache_dir() / "quantized"))
    decode_step = None
    if want_compile(compile, torch_device):
        compile_start = time.perf_counter()
        decode_step = compile_decode(model, config, torch_device, kv_dtype)  # after the attention choice it uses
        log.info("compiled decode for %s in %.1fs", directory.name, time.perf_counter() - compile_start)
    drafts_pay = True
    if torch_device.type == "cpu" and decode_step is None:  # beside a compiled step auto never drafts
        drafts_pay = cpu_kernels.choose_drafting(
            lambda: decode_calls_for_timing(model, config, kv_dtype, verify_rows=FIRST_DRAFT + 1, exact_rows=settings.mode != "none"),
            name, cache_dir() / "quantized", threads or cpu_kernels.default_threads(), expected_tokens(FIRST_DRAFT))
    seconds = time.perf_counter() - start
    log.info("loaded %s (%s, %s, %s, quantization %s, compiled %s) in %.2fs", directory, config.model_type,
             torch_device, torch_dtype, settings.mode, decode_step is not None, seconds)
    return LoadedModel(model, tokenizer, config, directory, torch_device, torch_dtype, seconds, settings.mode, decode_step, threads,
                       kv_dtype, drafts_pay)


def decode_calls_for_timing(model: torch.nn.Module, config: ModelConfig, kv_dtype: torch.dtype, verify_rows: int = 1,
                            exact_rows: bool = False) -> tuple[Callable[[], object], Callable[[], object]]:
    """(one eager decode step, one speculative verify of verify_rows tokens, as Session.verify runs it)
    of model at position 32 of a small cache of its own, of kv_dtype."""
    cache = KVCache(config, 64, torch.device("cpu"), kv_dtype)
    with torch.inference_mode():
        model(torch.zeros(1, 32, dtype=torch.long), torch.arange(32), cache, kv_len=32, last_only=True)
    tokens, positions = torch.zeros(1, verify_rows, dtype=torch.long), torch.arange(32, 32 + verify_rows)

    @torch.inference_mode()
    def step():
        return model(tokens[:, :1], positions[:1], cache, kv_len=33, last_only=True)

    @torch.inference_mode()
    def verify():
        return model(tokens, positions, cache, kv_len=32 + verify_rows, exact_rows=exact_rows)

    return step, verify
