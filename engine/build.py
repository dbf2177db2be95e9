"""Our model for a checkpoint: the module of its architecture with the checkpoint's tensors,
or its quantized form (read from the disk cache of quantized weights when it holds it)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.errors import EngineError
from engine.quantize import (
    QuantSettings, cache_path, load_quantized, prepare_for_device, quantize_model, remove_dead_cache_files, remove_stale_temporaries,
    save_quantized,
)  # fmt: skip
from engine.weights import read_state_dict

log = logging.getLogger(__name__)


def empty_model(config: ModelConfig) -> torch.nn.Module:
    """The architecture's module for config, on the meta device (no memory)."""
    with torch.device("meta"):
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
    else:
        # Cast first so the float parts end up in dtype while scales stay float32.
        model = quantize_model(build_model(config, read_state_dict(directory)).to(dtype), settings)
        try:
            save_quantized(model, path, directory)
            log.info("quantized weights cached in %s", path)
            remove_dead_cache_files(path.parent, keep=path)
        except OSError as exc:
            log.warning("cannot cache quantized weights in %s: %s", path, exc)
    # Kernel layouts (e.g. CPU int4 packing) depend on the device: made after the move.
    return prepare_for_device(model.to(device))
