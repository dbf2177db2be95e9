"""A CPU model's weights moved, once loaded, into one memory mapping of their own: aligned to 2 MB
and advised for transparent huge pages (Linux).

Decode reads every weight once a token. Where loading leaves them (glibc's heap, in memory freed
and handed out again while the checkpoint was read, quantized and repacked, in 4 KB pages), whole
decode steps were slower and moved more from process to process than over the same weights copied
into a mapping like this one: on the Intel Xeon (KVM), in one process, alternated, santacoder int8
at 512 / 1,500 tokens of context 1.46x / 1.16-1.18x faster, int4 1.10x, codegen-350M int8 1.10-1.64x
(benchmarks/README.md, "Weights in huge pages"). Most distributions advise huge pages only where a
program asks (transparent_hugepage = madvise); where they are off, the mapping is still fresh
memory of its own, which gave most of that gain there too.
"""

from __future__ import annotations

import ctypes
import logging
import mmap

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20  # x86-64's transparent huge page
MIN_BYTES = 64 << 10  # smaller tensors (biases, norms) stay where they are
ALIGNMENT = 64  # each tensor's start: a cache line, as PyTorch's CPU allocator aligns


def supported() -> bool:
    """Whether this platform can advise huge pages for a private anonymous mapping (Linux)."""
    return hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_PRIVATE")


def move_weights(model: nn.Module) -> int:
    """Move model's CPU parameters and buffers of MIN_BYTES or more that own their whole storage,
    embedding tables aside, into one new mapping, each at the same values, dtype and shape; return the bytes moved. Parameters keep
    their identity (a tied LM head still shares the embedding's), buffers are replaced in every
    module that holds them. Does nothing where huge pages cannot be asked for, or for a model whose
    weights would not fill one."""
    if not supported():
        return 0
    holders: dict[int, list[tuple[nn.Module, str]]] = {}  # storage address -> where that tensor is held
    tensors: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is None or not owns_storage(tensor) or tensor.nbytes < MIN_BYTES:
                    continue
                tensors[tensor.data_ptr()] = tensor
                holders.setdefault(tensor.data_ptr(), []).append((module, name))
    for address, held_by in holders.items():
        if all(isinstance(module, nn.Embedding) for module, _ in held_by):
            del tensors[address]  # a step reads a row or two of a table (a tied LM head's is moved)
    offsets, total = {}, 0
    for address, tensor in tensors.items():
        offsets[address] = total
        total += -(-tensor.nbytes // ALIGNMENT) * ALIGNMENT
    if total < HUGE_PAGE:
        return 0
    arena = huge_page_bytes(total)
    for address, tensor in tensors.items():
        begin = offsets[address]
        moved = arena[begin : begin + tensor.nbytes].view(tensor.dtype).view(tensor.shape)
        moved.copy_(tensor)
        for module, name in holders[address]:
            if name in module._parameters:
                module._parameters[name].data = moved
            else:
                module._buffers[name] = moved
        del tensor
    tensors.clear()
    give_back_freed_memory()
    log.debug("moved %.1f MB of weights into huge pages", total / 1e6)
    return total


def huge_page_bytes(nbytes: int) -> torch.Tensor:
    """nbytes of new memory (uint8, untouched: zeros), starting on a 2 MB boundary, in a private mapping
    advised for huge pages (Linux); the tensor, and any view of it, keeps the mapping alive."""
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_HUGEPAGE)  # before any page is touched: faults then take 2 MB at a time
    whole = torch.frombuffer(mapping, dtype=torch.uint8)
    start = -whole.data_ptr() % HUGE_PAGE
    return whole[start : start + nbytes]


def owns_storage(tensor: torch.Tensor) -> bool:
    """A contiguous CPU tensor that is the whole of its storage (not a view into another's)."""
    return (tensor.device.type == "cpu" and tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.nbytes)


def give_back_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc keeps what is freed inside its heap, which is
    where the weights were: without this the process would hold them twice)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
