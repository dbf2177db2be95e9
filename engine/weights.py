"""Reading a checkpoint's tensors: safetensors (single or sharded with an index) or
pytorch_model.bin, with torch.load(weights_only=True): never an arbitrary pickled object."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.errors import EngineError
from engine.files import check_regular, read_json_object


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
