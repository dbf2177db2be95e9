"""Our model for a checkpoint: the module of its architecture with the checkpoint's tensors,
or its quantized form (read from the disk cache of quantized weights when it holds it)."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from engine.config import ModelConfig
from engine.errors import EngineError
from engine.quantize import (
    QuantSettings, cache_path, load_quantized, narrow_embedding, prepare_for_device,
    quantize_model, remove_dead_cache_files, remove_stale_temporaries, save_quantized,
)  # fmt: skip
from engine.weights import read_state_dict

log = logging.getLogger(__name__)


class SkipInitializers(TorchFunctionMode):
    """torch.nn.init's in-place initializers (normal_, kaiming_uniform_, ones_, ...) as no-ops. On the
    meta device they give no numbers anyway, but PyTorch runs them through Python references that
    import torch._dynamo: ~1 s of every start, in a process that never compiles (`codegen-lsp complete`
    on the demo model took 4.7-5.0 s with them, 3.1-3.5 without)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if getattr(func, "__module__", None) == "torch.nn.init" and name.endswith("_") and not name.startswith("_"):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def empty_model(config: ModelConfig) -> torch.nn.Module:
    """The architecture's module for config, on the meta device (no memory), nothing initialized:
    every parameter is replaced from the checkpoint or the quantized cache."""
    with torch.device("meta"), SkipInitializers():
        return config.architecture.model_class(config)


def build_model(config: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Our module for config, with every parameter taken from state (checked by name and shape)."""
    model = empty_model(config)
    head = "lm_head.weight"
    expected = dict(model.named_parameters())
    if config.tie_word_embeddings:
        expected.pop(head)  # shared with the embedding, often left out of the file
    missing = [name for name in expected if name not in state]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise EngineError(f"checkpoint is missing tensors: {', '.join(missing[:3])}{more}")
    for name, param in expected.items():
        if state[name].shape != param.shape:
            raise EngineError(
                f"tensor {name} has shape {tuple(state[name].shape)}, expected {tuple(param.shape)} from config.json"
            )
    # Legacy .bin files also carry attention-mask buffers; anything that is not
    # one of our parameters is left behind.
    ignored = sorted(set(state) - set(expected) - {head})
    if ignored:
        log.debug("ignoring %d tensors that are not parameters, e.g. %s", len(ignored), ignored[0])
    model.load_state_dict({name: state[name] for name in expected}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embedding.weight
    return model.eval().requires_grad_(False)


def build_quantized_model(config: ModelConfig, directory: Path, settings: QuantSettings, dtype: torch.dtype, device: torch.device):
    """A quantized model on device, from the disk cache when it holds this checkpoint and settings."""
    path = cache_path(directory, settings, dtype)
    remove_stale_temporaries(path.parent)
    model = None
    if path.exists():
        model = load_quantized(empty_model(config), config, settings, dtype, path)
    if model is not None:
        log.info("quantized weights read from %s", path)
        from_files = storages(model)
    else:
        model = build_model(config, read_state_dict(directory))
        from_files = storages(model)
        # Quantized from the checkpoint's dtype (quantize_int8 / int4 widen each pass to float32, the same
        # numbers), then the float parameters cast to dtype; scales are buffers and stay float32. Casting the
        # model first made a float32 copy of every weight of a bfloat16 checkpoint (Qwen2.5-Coder-1.5B: a
        # 10.8 GB peak). A 16-bit token embedding stays so where it may (NarrowEmbedding).
        model = quantize_model(model, settings)
        narrow = narrow_embedding(model, dtype)
        for param in model.parameters():  # each once, a tied one too
            if not (narrow and param is model.embedding.weight):
                param.data = param.data.to(dtype)
        try:
            save_quantized(model, path, directory)
            log.info("quantized weights cached in %s", path)
            remove_dead_cache_files(path.parent, keep=path)
        except OSError as exc:
            log.warning("cannot cache quantized weights in %s: %s", path, exc)
    # Kernel layouts (e.g. CPU int4 packing) depend on the device: made after the move.
    model = prepare_for_device(model.to(device))
    copy_out_of_files(model, from_files)
    return model


def storages(model: torch.nn.Module) -> set[int]:
    """Where the storage of each parameter and buffer of model starts in memory."""
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}


def copy_out_of_files(model: torch.nn.Module, from_files: set[int]) -> None:
    """Give each tensor that model still holds from a file it was read from (`from_files`, as
    `storages` found them then) memory of its own, and hand freed memory back to the system.

    safetensors maps a file into memory and its tensors point into the map, which lives while any
    of them does. Quantizing reads every weight, and packing for our kernels copies each quantized
    weight, so the pages read stay counted to the process as long as the embedding, the norms or a
    scale still point into the map: santacoder in int8 held 5.8 GB after its first load (the 4.3
    GB float32 checkpoint's map beside 1.5 GB of tensors) and 3.2 GB after a load from the cache."""
    copies: dict[int, torch.Tensor] = {}  # by id: a tied LM head gets its embedding's copy
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for name, tensor in tensors.items():
                if tensor is None or tensor.untyped_storage().data_ptr() not in from_files:
                    continue
                if id(tensor) not in copies:
                    copy = tensor.detach().clone()
                    copies[id(tensor)] = torch.nn.Parameter(copy, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) else copy
                tensors[name] = copies[id(tensor)]
    release_free_memory()


def release_free_memory() -> None:
    """glibc keeps freed blocks of the heap for later allocations, counted to the process (here
    0.8 GB after santacoder's int8 weights were packed): malloc_trim hands them back (~10 ms). A
    no-op where there is no glibc. (The tensors replaced are freed as their last reference goes; a
    gc.collect() here freed nothing more and took 0.3 s a load in the test process.)"""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
