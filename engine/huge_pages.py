"""Memory that decode reads every token, in mappings of its own: aligned to 2 MB and advised for
transparent huge pages (Linux). A CPU model's weights move there once loaded (move_weights), and
KV caches are allocated there (engine/kv_cache.py).

Where loading leaves the weights (glibc's heap, in memory freed and handed out again while the
checkpoint was read, quantized and repacked, in 4 KB pages), decode steps were slower and moved
more from process to process: on the Intel Xeon VM, separate processes alternated, santacoder
int8 at 512 tokens of context 62.6-75.7 ms a step against 53.9-55.2 moved, int4 50.1-54.1
against 39.5-40.5, codegen-350M int8 at 1,500 35.5-42.3 against 33.7-35.0 (benchmarks/huge_pages.py
times both in one process; benchmarks/README.md, "Weights in huge pages"). Much of that came from
fresh memory alone (4 KB pages), the rest from the huge pages. Most distributions give huge pages
only where a program asks (transparent_hugepage = madvise). The price is at load: taking 2 MB
pages costs more than 4 KB ones where the kernel must first free such pages up (santacoder int8's
load 3.0-3.5 s against 0.9-1.3 there, a VM whose host takes back free memory; 1 GB of them took
0.14 s to touch where it had them free).
"""

from __future__ import annotations

import ctypes
import logging
import math
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
    embedding tables aside, into one new mapping, each at the same values, dtype and shape; return
    the bytes moved. Parameters keep their identity (a tied LM head still shares the embedding's),
    buffers are replaced in every module that holds them, and each tensor left behind is freed as
    it moves. Does nothing where huge pages cannot be asked for, or for a model whose weights would
    not fill one."""
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
    try:
        arena = huge_page_bytes(total)
    except OSError as exc:  # no address space or memory for a second copy: they stay where they are
        log.warning("weights left where loading put them: no mapping of %.0f MB for them (%s)", total / 1e6, exc)
        return 0
    for address in list(tensors):
        tensor = tensors.pop(address)  # the last reference here: freed once its holders take the copy
        moved = arena[offsets[address] : offsets[address] + tensor.nbytes].view(tensor.dtype).view(tensor.shape)
        moved.copy_(tensor)
        for module, name in holders[address]:
            if name in module._parameters:
                module._parameters[name].data = moved
            else:
                module._buffers[name] = moved
        del tensor
    give_back_freed_memory()
    log.debug("moved %.1f MB of weights into huge pages", total / 1e6)
    return total


def huge_page_bytes(nbytes: int) -> torch.Tensor:
    """nbytes of new memory (uint8, untouched: zeros), starting on a 2 MB boundary, in a private mapping
    advised for huge pages (Linux); the tensor, and any view of it, keeps the mapping alive."""
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)  # before any page is touched: faults then take 2 MB at a time
    except OSError:  # a kernel built without transparent huge pages: fresh memory all the same
        pass
    whole = torch.frombuffer(mapping, dtype=torch.uint8)
    start = -whole.data_ptr() % HUGE_PAGE
    return whole[start : start + nbytes]


def fills_one(nbytes: int) -> bool:
    """Whether nbytes of new memory would fill a huge page, and they can be asked for here."""
    return nbytes >= HUGE_PAGE and supported()


def zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A new CPU tensor of zeros in huge pages (huge_page_bytes), or from PyTorch's allocator where
    no mapping can be had (which then fails as PyTorch does when memory runs out)."""
    try:
        return huge_page_bytes(math.prod(shape) * dtype.itemsize).view(dtype).view(shape)
    except OSError:
        return torch.zeros(shape, dtype=dtype)


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
