"""Find a checkpoint, read its weights and build our model from them.

A model spec is a local directory or a hub id ("ORG/NAME", optionally
"ORG/NAME@REVISION") looked up offline in the local Hugging Face cache.
Nothing is downloaded and no code from the checkpoint is ever run.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from engine.codegen import CodeGen
from engine.compile import compile_decode, want_compile
from engine.config import ModelConfig
from engine.errors import EngineError
from engine.files import check_regular, read_json_object, read_text
from engine.gpt_bigcode import GPTBigCode
from engine.quantize import (
    QuantSettings, cache_path, load_quantized, prepare_for_device, quantize_model, remove_stale_temporaries, save_quantized,
)  # fmt: skip
from engine.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

ARCHITECTURES = {"codegen": CodeGen, "gpt_bigcode": GPTBigCode}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The small model shipped with the project, used when no model is configured.
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"


@dataclass
class LoadedModel:
    """Everything needed to run one checkpoint: model, tokenizer and where they live."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    quantization: str = "none"
    # Compiled single-token decode (engine/compile.py), used by Session.step
    # when set: decode_step(cache, token, position) -> logits (vocab,).
    decode_step: Callable | None = None


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def resolve_model_dir(spec: str) -> Path:
    """A local directory, or the snapshot of a hub id in the local Hugging Face cache."""
    try:
        path = Path(spec).expanduser()
    except RuntimeError as exc:  # "~user/..." for a user that does not exist
        raise EngineError(f"model path not found: {spec} ({exc})") from None
    if path.exists():
        if not path.is_dir():
            raise EngineError(f"model path is not a directory: {spec}")
        return path
    name, _, revision = spec.partition("@")
    parts = name.split("/")
    looks_like_hub_id = len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise EngineError(f"model path not found: {spec}")
    repo = hub_cache_dir() / f"models--{parts[0]}--{parts[1]}"
    snapshot = _find_snapshot(repo, revision or "main")
    if snapshot is None:
        raise EngineError(
            f"model {name!r} is not in the local Hugging Face cache ({hub_cache_dir()}); "
            "download it on a machine with network access or give a local directory"
        )
    return snapshot


def _find_snapshot(repo: Path, revision: str) -> Path | None:
    snapshots = repo / "snapshots"
    ref = repo / "refs" / revision
    if ref.exists():
        revision = read_text(ref, limit=4096).strip()
    if Path(revision).name != revision or revision in ("", ".", ".."):
        return None  # a snapshot is a folder of snapshots/, named by its commit
    if (snapshots / revision).is_dir():
        return snapshots / revision
    # No ref for "main" (e.g. a cache copied by hand): use the only snapshot there is.
    candidates = sorted(p for p in snapshots.glob("*") if p.is_dir()) if snapshots.is_dir() else []
    if revision == "main" and len(candidates) == 1:
        return candidates[0]
    return None


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: safetensors (single or sharded) or pytorch_model.bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.exists():
            weight_map = read_json_object(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise EngineError(f"{index}: expected a weight_map of tensor names to file names")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                # A shard is a file beside the index, never a path that leads elsewhere.
                if Path(shard).name != shard or shard in ("", ".", ".."):
                    raise EngineError(f"{index}: shard {shard!r} is not a file name in the checkpoint directory")
                state.update(_read_weights_file(directory / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).exists():
            return _read_weights_file(directory / name)
    raise EngineError(f"no weights in {directory}: expected model.safetensors or pytorch_model.bin")


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise EngineError(f"weights file listed in the index is missing: {path}")
    check_regular(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError, ...
            raise EngineError(f"corrupt or truncated safetensors file {path}: {exc}") from None
    try:
        # weights_only: plain tensors only, never arbitrary pickled objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"corrupt or unsafe weights file {path}: {message}") from None
    if not isinstance(state, dict):
        raise EngineError(f"{path} does not hold a state dict")
    return state


def build_model(config: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Our module for config, with every parameter taken from state (checked by name and shape)."""
    with torch.device("meta"):
        model = ARCHITECTURES[config.model_type](config)
    expected = dict(model.named_parameters())
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")  # shared with wte, often left out of the file
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
    ignored = sorted(set(state) - set(expected) - {"lm_head.weight"})
    if ignored:
        log.debug("ignoring %d tensors that are not parameters, e.g. %s", len(ignored), ignored[0])
    model.load_state_dict({name: state[name] for name in expected}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    return model.eval().requires_grad_(False)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' was asked for but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise EngineError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise EngineError(f"unknown dtype {dtype!r} (use auto, float32, float16 or bfloat16)")
    return DTYPES[dtype]


def load_model(
    spec: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "none",
    compile: str = "auto",
    quantize_lm_head: bool = True,
) -> LoadedModel:
    """Load a checkpoint (the shipped demo model when spec is None or empty).

    quantization: none | int8 | int4 (weight-only, engine/quantize.py);
    compile: auto | true | false (compiled decode, engine/compile.py).
    """
    settings = QuantSettings(quantization, lm_head=quantize_lm_head)
    if compile not in ("auto", "true", "false"):
        raise EngineError(f"unknown compile setting {compile!r} (use auto, true or false)")
    start = time.perf_counter()
    spec = spec or str(DEMO_MODEL_DIR)
    directory = resolve_model_dir(spec)
    config = ModelConfig.from_file(directory / "config.json")
    tokenizer = load_tokenizer(directory, eos_token_id=config.eos_token_id)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if settings.mode == "none":
        model = build_model(config, read_state_dict(directory)).to(device=torch_device, dtype=torch_dtype)
    else:
        model = build_quantized_model(config, directory, settings, torch_dtype, torch_device)
    lm = LoadedModel(model, tokenizer, config, directory, torch_device, torch_dtype, 0.0, settings.mode)
    if want_compile(compile, torch_device):
        lm.decode_step = compile_decode(lm)
    lm.load_seconds = time.perf_counter() - start
    log.info("loaded %s (%s, %s, %s, quantization %s, compiled %s) in %.2fs", directory, config.model_type,
             torch_device, torch_dtype, settings.mode, lm.decode_step is not None, lm.load_seconds)
    return lm


def build_quantized_model(config: ModelConfig, directory: Path, settings: QuantSettings, dtype: torch.dtype, device: torch.device):
    """A quantized model on device, from the disk cache when it holds this checkpoint and settings."""
    path = cache_path(directory, settings, dtype)
    remove_stale_temporaries(path.parent)
    model = None
    if path.exists():
        with torch.device("meta"):
            skeleton = ARCHITECTURES[config.model_type](config)
        model = load_quantized(skeleton, config, settings, dtype, path)
    if model is not None:
        log.info("quantized weights read from %s", path)
    else:
        # Cast first so the float parts end up in dtype while scales stay float32.
        model = quantize_model(build_model(config, read_state_dict(directory)).to(dtype), settings)
        try:
            save_quantized(model, path)
            log.info("quantized weights cached in %s", path)
        except OSError as exc:
            log.warning("cannot cache quantized weights in %s: %s", path, exc)
    # Kernel layouts (e.g. CPU int4 packing) depend on the device: made after the move.
    return prepare_for_device(model.to(device))
