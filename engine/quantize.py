"""Weight-only int8 and int4 quantization of the linear layers, gpt-fast style.

The model files stay untouched: quantizing swaps each nn.Linear for a module
that holds integer weights and transforms the state dict to match.

- int8: symmetric, one scale per output channel.
- int4: asymmetric, one scale and zero point per group of `group_size` input
  columns (gpt-fast's layout: q in [0, 15], w = (q - 8) * scale + zero). The
  zero point is a whole number of scales (w = (q - z) * scale, z in [0, 15]),
  so our CPU kernel stores it in 4 bits.

Which kernel runs depends on the device and on the number of tokens M:

- CPU: each layer shape gets the fastest correct of the kernels this machine
  runs, measured at the first load and remembered (engine/cpu_kernels.py):
  ours (engine/kernels/cpu_matvec.cpp, built at first use where a compiler is
  found), PyTorch's packed weight-only kernels (`aten._weight_int8pack_mm`,
  `aten._weight_int4pack_mm_for_cpu`, with bfloat16 activations, as with
  float32 ones they are 2-30x slower), or dequantize-and-matmul. The choice is
  made for one token (decode) and a verify's rows together; int8 has two of ours,
  with float activations or with activations rounded to int16, int4 two on
  AVX-512 VNNI, activations rounded to int16 or to bytes per weight group
  (OURS_VARIANTS). Ours run up to
  DECODE_KERNEL_MAX_TOKENS as for one token (a speculative verify's rows are
  bit for bit decode steps);
  beyond (prefill), our products of the integer weights and activations
  rounded to integers: int8 to 7 bits per group of 256 columns (~1.5x as fast
  as a float32 matmul alone, at about bfloat16 activations' precision; 8 bits
  per 128 columns with AVX-512 VNNI), int4 to 8 bits per 128 columns against
  q - zero (per weight group, with an offset term, in the portable build), in
  the best instruction set of the CPU whichever decode kernel was chosen (VNNI
  products are 1.5-2x AVX2's; where AMX tiles run, int8's takes them, with the
  same numbers). With
  PyTorch's int8 kernel, every M > 1 dequantizes and runs a dense matmul.
- CUDA: int8 as dequantize-and-matmul, which torch.compile fuses into one
  kernel; int4 through `aten._weight_int4pack_mm` (needs bfloat16).
- Anything else: dequantize and run a plain F.linear, so every mode runs on
  every device.

Quantized weights are cached on disk as safetensors, keyed by the checkpoint
files and the settings, so a second start skips quantizing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine import cpu_kernels
from engine.config import ModelConfig
from engine.errors import EngineError
from engine.files import check_regular
from engine.options import QUANTIZATIONS as MODES
from engine.paths import cache_dir

log = logging.getLogger(__name__)

# int4 group size, chosen with benchmarks/quant_quality.py and `codegen-lsp bench`:
# on the 350M shape (CPU) decode speed is the same for 32, 64 and 128 (within
# 3 %), while 32 gives the smallest logit error; its extra scales and zeros
# cost 0.625 bit per weight in memory (0.16 for 128; float16 scales, 4-bit zero points).
DEFAULT_GROUP_SIZE = 32
CACHE_FORMAT = 5  # bump when the on-disk layout of quantized weights changes (4: files name their checkpoint; 5: int4 zero points whole)
TEMPORARY_SUFFIX = ".partial"  # a cache file being written: NAME.PID.partial
# Up to this many tokens per call our int8 and int4 matrix-vector kernels (or PyTorch's packed int8 one) run, as
# for one token; beyond (prefill), products with the activations rounded to integers (engine/kernels/cpu_matvec.cpp).
DECODE_KERNEL_MAX_TOKENS = 64


@dataclass(frozen=True)
class QuantSettings:
    mode: str = "none"  # none | int8 | int4
    group_size: int = DEFAULT_GROUP_SIZE  # int4 only: input columns sharing one scale and zero
    lm_head: bool = True  # quantize the LM head too (large for these vocabularies)

    def __post_init__(self):
        if self.mode not in MODES:
            raise EngineError(f"unknown quantization {self.mode!r} (use {', '.join(MODES)})")
        if self.group_size not in (32, 64, 128, 256):
            raise EngineError(f"int4 group size must be 32, 64, 128 or 256, not {self.group_size}")


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


# Weights quantized a pass: each pass's float32 temporaries (~2 MB each) stay in the CPU's caches, where
# a whole layer's went to memory and back at each of ~10 tensor operations (the same numbers; all of
# santacoder's weights: int4 7 s, int8 6 s at once, 2 s and 1 s in passes, benchmarks/README.md).
QUANTIZE_CHUNK = 1 << 19


def row_chunks(weight: torch.Tensor):
    """(first row, rows) of `weight` in passes of about QUANTIZE_CHUNK weights."""
    step = max(1, QUANTIZE_CHUNK // weight.shape[1])
    for start in range(0, weight.shape[0], step):
        yield start, weight[start : start + step]


# ---------------------------------------------------------------- int8


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int8 (N, K) and float32 scales (N,), symmetric per output channel."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scales = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start, rows in row_chunks(weight):
        w = rows.float()
        row_scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127
        q[start : start + len(rows)] = torch.round(w / row_scales[:, None]).clamp(-128, 127).to(torch.int8)
        scales[start : start + len(rows)] = row_scales
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales[:, None]


def pack_int8_for_cpu(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 -> the layout of our CPU int8 kernel (engine/kernels/cpu_matvec.cpp): blocks of 4
    rows (zero rows pad the last), then 16 columns of each of the 4 rows in turn. Made by an op of
    ours in one pass (only our kernels read it, so they are loaded; unpack_int8_for_cpu is its inverse)."""
    return torch.ops.codegen_lsp_cpu.pack_int8(weight)


def unpack_int8_for_cpu(packed: torch.Tensor, rows: int) -> torch.Tensor:
    """pack_int8_for_cpu's output -> the (N, K) weight."""
    blocks, chunks = packed.shape[:2]
    return packed.permute(0, 2, 1, 3).reshape(blocks * 4, chunks * 16)[:rows]


class QuantizedLinear(nn.Module):
    """What Int8Linear and Int4Linear share: where the weight is and which kernels can run it."""

    PYTORCH_KERNEL = PYTORCH_OP = ""  # PyTorch's packed kernel: our name for it, its aten op
    OURS_K_MULTIPLE = 1  # our CPU kernel runs layers whose in_features this divides
    OURS_VARIANTS = ("",)  # our decode kernels per instruction set: "cpp-avx2" + each suffix
    VARIANT_ISAS: dict[str, tuple[str, ...]] = {}  # a suffix built for these instruction sets only (else all)
    OURS_OP = ""  # our decode op for variant "" ("<OURS_OP>_<variant>" for the others: int8_matvec_i16)

    @staticmethod
    def unpack(packed: torch.Tensor, rows: int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device  # weight or packed, and the scales: all on one device

    def checkpoint_weight(self) -> torch.Tensor:
        """The weight in its checkpoint layout (quantize_int8's or quantize_int4's), whichever layout the module holds."""
        return self.weight if self.weight is not None else self.unpack(self.packed, self.out_features)

    def kernel_candidates(self) -> list[str]:
        """The decode kernels that run here, the fallback last."""
        if self.device.type != "cpu":
            return ["dequantize"]
        fits = self.in_features % self.OURS_K_MULTIPLE == 0
        kernels = cpu_kernels.compiled_kernels(cache_dir() / "kernels") if fits else []
        ours = self.our_kernels(kernel.removeprefix("cpp-") for kernel in kernels)
        theirs = [self.PYTORCH_KERNEL] if _has_op(self.PYTORCH_OP) else []
        return ours + theirs + ["dequantize"]

    def our_kernels(self, isas) -> list[str]:
        """Our decode kernels' names ("cpp-<isa><variant>") for these instruction sets."""
        return [f"cpp-{isa}{variant}" for isa in isas for variant in self.OURS_VARIANTS
                if isa in self.VARIANT_ISAS.get(variant, (isa,))]

    def set_instruction_sets(self, kernel: str) -> None:
        """For one of our kernels ("cpp-<isa>[-<variant>]"): self.decode_op, the variant's op, self.isa,
        its instruction set, and self.product_isa, the prefill product's: the best this CPU runs,
        whichever decode kernel won (where AVX-512 and AVX2 decode tie, reading weights at the same
        speed, VNNI products are twice as fast). For any other kernel "" and no op."""
        self.isa = self.product_isa = ""
        self.decode_op = None
        if not kernel.startswith("cpp-"):
            return
        self.isa, _, variant = kernel.removeprefix("cpp-").partition("-")
        self.product_isa = cpu_kernels.product_isa(cache_dir() / "kernels")
        self.decode_op = getattr(torch.ops.codegen_lsp_cpu, f"{self.OURS_OP}_{variant}" if variant else self.OURS_OP)

    def with_kernel(self, kernel: str) -> "QuantizedLinear":
        """A twin sharing this module's weights, set up for kernel (to time kernels side by side)."""
        twin = copy.copy(self)
        twin._buffers = dict(self._buffers)  # prepare() below gives the twin its own layout
        twin.prepare(kernel)
        return twin


class Int8Linear(QuantizedLinear):
    """y = x W^T + b with W stored as int8 and one float32 scale per output channel.

    The weight lives in one layout at a time: `weight` (N, K) as in the checkpoint, or, for our CPU
    kernels, `packed` (pack_int8_for_cpu) with `weight` None, so memory holds one copy either way.
    """

    PYTORCH_KERNEL, PYTORCH_OP, OURS_K_MULTIPLE, OURS_OP = "int8pack", "_weight_int8pack_mm", 32, "int8_matvec"
    # Float activations, or ("-i16") activations rounded to int16 per 256 columns and exact integer
    # products: 1.1-1.3x for one token on the AVX2 EPYC, 1.5-1.7x for a verify's 5 (fewer
    # instructions per weight; within 3e-5 of the float result where the float kernel is within 1e-6).
    OURS_VARIANTS = ("", "-i16")
    unpack = staticmethod(unpack_int8_for_cpu)

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        self.kernel = "dequantize"  # the decode kernel, set by prepare(): see kernel_candidates()
        self.isa = self.product_isa = ""  # ours: set_instruction_sets
        self.decode_op = None
        self.register_buffer("packed", None, persistent=False)
        self.register_buffer("scales_bf16", None, persistent=False)

    def prepare(self, kernel: str | None = None) -> None:
        """Set up a decode kernel (by default PyTorch's packed one where it runs) on the module's device."""
        if kernel is None:
            kernel = "int8pack" if self.device.type == "cpu" and _has_op("_weight_int8pack_mm") else "dequantize"
        weight = self.checkpoint_weight()
        self.kernel = kernel
        if kernel == "int8pack" and weight.data_ptr() % 64:
            # For 4 tokens or more (a verify) PyTorch's kernel (torch 2.13) reads the weight with aligned
            # loads: one 8 bytes off a 16-byte boundary, as a safetensors file may place it, crashed the process.
            weight = weight.clone()  # PyTorch's CPU allocator aligns to 64 bytes
        self.weight, self.packed = (None, pack_int8_for_cpu(weight)) if kernel.startswith("cpp-") else (weight, None)
        self.scales_bf16 = self.scales.to(torch.bfloat16) if kernel == "int8pack" else None
        self.set_instruction_sets(kernel)

    def shape_key(self) -> str:
        return f"int8 {self.in_features}->{self.out_features}"

    def reference(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """float32 x W^T + b for the given output rows."""
        bias = None if self.bias is None else self.bias[rows].float()
        return F.linear(x.float(), dequantize_int8(self.checkpoint_weight()[rows], self.scales[rows]), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // self.in_features
        if self.kernel.startswith("cpp-"):
            # Buffers from the module's dict: nn.Module.__getattr__ costs ~1.5 us each on the AVX2 EPYC,
            # a tenth of a small layer's call (parameters are faster: engine/decoder.py mirrors them).
            buffers = self._buffers
            if tokens > DECODE_KERNEL_MAX_TOKENS:
                return torch.ops.codegen_lsp_cpu.int8_matmul(x, buffers["packed"], buffers["scales"], self.bias, self.product_isa)
            return self.decode_op(x, buffers["packed"], buffers["scales"], self.bias, self.isa)
        if self.kernel == "int8pack" and tokens <= DECODE_KERNEL_MAX_TOKENS:
            # Row by row the same results as one token (a speculative verify's rows equal decode steps).
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16), self.weight, self.scales_bf16)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        else:
            # Scaling the output rather than the weight keeps the dequantized
            # weight a plain cast, which torch.compile fuses into the matmul.
            y = F.linear(x, self.checkpoint_weight().to(x.dtype)) * self.scales.to(x.dtype)
        return y + self.bias if self.bias is not None else y


# ---------------------------------------------------------------- int4


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> (q uint8 (N, K/2) two values per byte, scales_and_zeros float32 (K/g, N, 2)).

    Byte j of a row holds column 2j in its high nibble and 2j+1 in its low one
    (the layout `aten._convert_weight_to_int4pack` takes on CUDA).
    """
    N, K = weight.shape
    packed = torch.empty(N, K // 2, dtype=torch.uint8, device=weight.device)
    scales_and_zeros = torch.empty(K // group_size, N, 2, dtype=torch.float32, device=weight.device)
    for start, rows in row_chunks(weight):
        n = len(rows)
        groups = rows.float().reshape(n, K // group_size, group_size)
        # The scale is a float16 number and q = z decodes to 0 for a whole z in [0, 15] (the range
        # spans 0), so our CPU kernel stores a group's scale and zero point in 2.5 bytes, where a
        # float16 value of q = 0 took 4 (demo model, benchmarks/quant_quality.py: 245/256 tokens
        # agree with float32's, 242 with that float offset). The other kernels read them as floats.
        low, high = groups.amin(dim=-1, keepdim=True).clamp(max=0), groups.amax(dim=-1, keepdim=True).clamp(min=0)
        scales = ((high - low).clamp(min=1e-6) / 15).half().float()
        low = -torch.round(-low / scales).clamp(0, 15) * scales  # -z * scale, exact in float32
        zeros = low + scales * 8  # the value that q = 8 decodes to: (8 - z) * scale
        q = torch.round((groups - low) / scales).clamp(0, 15).to(torch.uint8).reshape(n, K)
        packed[start : start + n] = (q[:, ::2] << 4) | q[:, 1::2]
        scales_and_zeros[:, start : start + n, 0] = scales.reshape(n, -1).T
        scales_and_zeros[:, start : start + n, 1] = zeros.reshape(n, -1).T
    return packed, scales_and_zeros


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (N, K/2) -> int32 (N, K) values in [0, 15]."""
    q = torch.stack([packed >> 4, packed & 15], dim=-1)
    return q.reshape(packed.shape[0], -1).to(torch.int32)


def dequantize_int4(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    q = unpack_int4(packed)
    N, K = q.shape
    scales, zeros = scales_and_zeros.float().transpose(0, 1).unbind(-1)  # (N, K/g) each
    w = (q.reshape(N, K // group_size, group_size).float() - 8) * scales[..., None] + zeros[..., None]
    return w.reshape(N, K)


def zero_points(scales_and_zeros: torch.Tensor) -> torch.Tensor | None:
    """Each group's zero point z (w = (q - z) * scale), or None where one is not a whole number in
    [0, 15] (quantize_int4 makes only such; our CPU layout stores them in 4 bits)."""
    scales, zeros = scales_and_zeros.float().unbind(-1)
    z = 8 - zeros / scales
    return z if torch.equal(z, z.round().clamp(0, 15)) else None


def pack_int4_for_cpu(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """quantize_int4's layout -> the layout of our CPU int4 kernel (engine/kernels/cpu_matvec.cpp):
    blocks of 8 rows (zero rows pad the last), and in each, group by group, the weights (16 bytes
    per 4 columns: bytes 2r and 2r+1 hold row r's columns 4c, 4c+1 in their low nibbles and 4c+2,
    4c+3 in their high ones), then the 8 rows' scales as float16 and their zero points z (w = (q - z)
    * scale) in 4 bytes, row r's in bits 4r to 4r + 3 of a little-endian uint32. Made by an op of ours
    in one pass, as pack_int8_for_cpu (as a dozen PyTorch ops it took 1.4 s of a 2.2 s santacoder load);
    unpack_int4_for_cpu and unpack_int4_scales_for_cpu are its inverse."""
    try:
        return torch.ops.codegen_lsp_cpu.pack_int4(packed, scales_and_zeros, group_size)
    except ValueError as exc:  # a zero point the layout cannot hold
        raise EngineError("int4 weights whose zero points are not whole numbers of scales in [0, 15]") from exc


# In pack_int4_for_cpu's layout, what follows each group's weights in a block: 8 float16 scales and 8
# 4-bit zero points (INT4_TAIL_BYTES in engine/kernels/cpu_matvec.cpp).
INT4_TAIL_BYTES = 20


def unpack_int4_scales_for_cpu(weights: torch.Tensor, rows: int) -> torch.Tensor:
    """pack_int4_for_cpu's output -> quantize_int4's scales_and_zeros (K/g, N, 2), exactly."""
    blocks, groups, group_bytes = weights.shape
    tail = weights[..., group_bytes - INT4_TAIL_BYTES :]
    scales = tail[..., :16].contiguous().view(torch.float16).float()  # (blocks, K/g, 8)
    z = torch.stack([tail[..., 16:] & 15, tail[..., 16:] >> 4], dim=-1).reshape(blocks, groups, 8).float()
    scales, z = (t.transpose(0, 1).reshape(groups, blocks * 8)[:, :rows] for t in (scales, z))
    return torch.stack([scales, (8 - z) * scales], dim=-1)


def unpack_int4_for_cpu(weights: torch.Tensor, rows: int) -> torch.Tensor:
    """pack_int4_for_cpu's output -> quantize_int4's (N, K/2) bytes."""
    blocks, groups, group_bytes = weights.shape
    q = weights[..., : group_bytes - INT4_TAIL_BYTES].reshape(blocks, -1, 8, 2)  # block, column quad, row, pair
    q = torch.cat([q & 15, q >> 4], dim=-1).permute(0, 2, 1, 3).reshape(blocks * 8, -1)[:rows]
    return (q[:, ::2] << 4) | q[:, 1::2]


class Int4Linear(QuantizedLinear):
    """y = x W^T + b with W stored as grouped int4 (see quantize_int4).

    For our CPU kernels the weight, scales and zero points move to `packed` (pack_int4_for_cpu), and
    `weight` and `scales_and_zeros` are None: one copy in memory (the float32 scales and zeros alone
    took a quarter of a byte a weight at groups of 32, 43 % of the packed copy). PyTorch's packed
    kernels keep a copy in their layout beside `weight`.
    """

    PYTORCH_KERNEL, PYTORCH_OP, OURS_OP = "int4pack", "_weight_int4pack_mm_for_cpu", "int4_matvec"
    # x rounded to int16 per group, or ("-i8", AVX-512 VNNI) to bytes: one token reads the weights at
    # the same speed either way, a verify's 5 rows' products take ~25 % less time (benchmarks/README.md, "CPU decode kernels").
    OURS_VARIANTS, VARIANT_ISAS = ("", "-i8"), {"-i8": ("avx512",)}
    unpack = staticmethod(unpack_int4_for_cpu)

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int, dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer(
            "scales_and_zeros", torch.empty(in_features // group_size, out_features, 2, dtype=torch.float32, device=device)
        )
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        self.kernel = "dequantize"  # set by prepare(): see kernel_candidates(), or "cuda"
        self.isa = self.product_isa = ""  # ours: set_instruction_sets
        self.decode_op = None
        self.register_buffer("packed", None, persistent=False)  # the kernel's own layout of weight
        self.register_buffer("kernel_scales_and_zeros", None, persistent=False)  # PyTorch's kernels: bfloat16

    def prepare(self, kernel: str | None = None) -> None:
        """Repack the weight for a kernel (by default PyTorch's packed one where the device has it)."""
        if kernel is None:
            if self.device.type == "cpu" and _has_op("_weight_int4pack_mm_for_cpu"):
                kernel = "int4pack"
            elif self.device.type == "cuda" and _has_op("_weight_int4pack_mm") and self._cuda_shapes_ok():
                kernel = "cuda"
            else:
                kernel = "dequantize"
        weight, scales_and_zeros = self.checkpoint_weight(), self.checkpoint_scales_and_zeros()
        self.kernel, self.weight, self.scales_and_zeros = kernel, weight, scales_and_zeros
        self.packed = self.kernel_scales_and_zeros = None
        self.set_instruction_sets(kernel)
        if kernel.startswith("cpp-"):
            self.packed = pack_int4_for_cpu(weight, scales_and_zeros, self.group_size)
            self.weight = self.scales_and_zeros = None
        elif kernel == "int4pack":
            # It takes a multiple of 16 rows (an LM head of 50,257 has not): zero rows pad the
            # weight, and forward() cuts their outputs off.
            padding = -self.out_features % 16
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(F.pad(weight, (0, 0, 0, padding))), 1)
            self.kernel_scales_and_zeros = F.pad(self.scales_and_zeros, (0, 0, 0, padding)).to(torch.bfloat16)
        elif kernel == "cuda":
            inner_k_tiles = 8 if self.in_features % 1024 == 0 else 4 if self.in_features % 512 == 0 else 2
            self.packed = torch.ops.aten._convert_weight_to_int4pack(weight, inner_k_tiles)
            self.kernel_scales_and_zeros = self.scales_and_zeros.to(torch.bfloat16)

    def checkpoint_scales_and_zeros(self) -> torch.Tensor:
        """quantize_int4's scales_and_zeros, whichever layout the module holds."""
        if self.scales_and_zeros is not None:
            return self.scales_and_zeros
        return unpack_int4_scales_for_cpu(self.packed, self.out_features)

    def _cuda_shapes_ok(self) -> bool:
        # The tensor-core kernel tiles N by 8 and K by 16 * inner_k_tiles (>= 2).
        return self.out_features % 8 == 0 and self.in_features % 256 == 0

    def shape_key(self) -> str:
        return f"int4 g{self.group_size} {self.in_features}->{self.out_features}"

    def reference(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """float32 x W^T + b for the given output rows."""
        weight = dequantize_int4(self.checkpoint_weight()[rows], self.checkpoint_scales_and_zeros()[:, rows], self.group_size)
        return F.linear(x.float(), weight, None if self.bias is None else self.bias[rows].float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel.startswith("cpp-"):
            packed = self._buffers["packed"]  # as in Int8Linear.forward
            if x.numel() // self.in_features <= DECODE_KERNEL_MAX_TOKENS:
                return self.decode_op(x, packed, self.out_features, self.group_size, self.bias, self.isa)
            return torch.ops.codegen_lsp_cpu.int4_matmul(x, packed, self.out_features, self.group_size, self.bias, self.product_isa)
        shape = (*x.shape[:-1], self.out_features)
        if self.kernel == "int4pack":
            # The CPU kernel also takes float32 activations, but is 2-15x slower with them.
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.reshape(-1, self.in_features).to(torch.bfloat16), self.packed, self.group_size, self.kernel_scales_and_zeros
            )[:, : self.out_features]
        elif self.kernel == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(
                x.reshape(-1, self.in_features).to(torch.bfloat16), self.packed, self.group_size, self.kernel_scales_and_zeros
            )
        else:
            w = dequantize_int4(self.checkpoint_weight(), self.scales_and_zeros, self.group_size)
            y = F.linear(x, w.to(x.dtype))
        y = y.to(x.dtype).reshape(shape)
        return y + self.bias if self.bias is not None else y


# ---------------------------------------------------------------- swapping modules


def quantizable_linears(model: nn.Module, settings: QuantSettings) -> dict[str, nn.Linear]:
    """Every nn.Linear to quantize, by qualified name (LM head only if settings.lm_head)."""
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or (name == "lm_head" and not settings.lm_head):
            continue
        if settings.mode == "int4" and module.in_features % settings.group_size:
            log.warning("%s: %d inputs not divisible by int4 group size %d; left unquantized",
                        name, module.in_features, settings.group_size)
            continue
        found[name] = module
    return found


def _make_module(linear: nn.Linear, settings: QuantSettings, device=None) -> nn.Module:
    has_bias = linear.bias is not None
    dtype = linear.weight.dtype
    if settings.mode == "int8":
        return Int8Linear(linear.in_features, linear.out_features, has_bias, dtype=dtype, device=device)
    return Int4Linear(linear.in_features, linear.out_features, has_bias, settings.group_size, dtype=dtype, device=device)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def quantize_model(model: nn.Module, settings: QuantSettings) -> nn.Module:
    """Swap the linear layers of a loaded float model for quantized ones, in place."""
    if settings.mode == "none":
        return model
    for name, linear in quantizable_linears(model, settings).items():
        module = _make_module(linear, settings, device=linear.weight.device)
        if settings.mode == "int8":
            module.weight, module.scales = quantize_int8(linear.weight)
        else:
            module.weight, module.scales_and_zeros = quantize_int4(linear.weight, settings.group_size)
        if linear.bias is not None:
            module.bias.copy_(linear.bias)
        set_module(model, name, module)
    return model


def empty_quantized_model(model: nn.Module, settings: QuantSettings) -> nn.Module:
    """The same swap on a model built on the meta device, ready for load_state_dict(assign=True)."""
    for name, linear in quantizable_linears(model, settings).items():
        set_module(model, name, _make_module(linear, settings, device="meta"))
    return model


def prepare_for_device(model: nn.Module) -> nn.Module:
    """Pick kernels (and repack weights for them) once the model sits on its device: on the CPU,
    the fastest correct one per layer shape (engine/cpu_kernels.py)."""
    quantized = [m for m in model.modules() if isinstance(m, (Int8Linear, Int4Linear))]
    on_cpu = [m for m in quantized if m.device.type == "cpu"]
    cpu_kernels.choose_kernels(on_cpu, cache_dir() / "quantized")
    for module in quantized:
        if module.device.type != "cpu":
            module.prepare()
    return model


class NarrowEmbedding(nn.Embedding):
    """A quantized model's token embedding kept in its checkpoint's 16-bit dtype while the model
    computes in float32: each row looked up is widened, so the numbers are those of a float32 table.
    It is a quantized model's largest float tensor (Qwen2.5-Coder-1.5B's: 0.93 GB in float32, as
    much as all its int4 weights)."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx).float()


NARROW_TABLE_DTYPES = (torch.float16, torch.bfloat16)


def can_narrow_embedding(model: nn.Module, dtype: torch.dtype) -> bool:
    """Whether a quantized model computing in dtype may keep its token embedding 16-bit: in float32,
    and unless a float LM head multiplies by the same table."""
    return dtype == torch.float32 and getattr(model.lm_head, "weight", None) is not model.embedding.weight


def narrow_embedding(model: nn.Module, dtype: torch.dtype) -> bool:
    """Make model's token embedding a NarrowEmbedding where its weight is 16-bit and it may stay so
    (can_narrow_embedding); whether it did."""
    if model.embedding.weight.dtype in NARROW_TABLE_DTYPES and can_narrow_embedding(model, dtype):
        model.embedding.__class__ = NarrowEmbedding
        return True
    return False


# ---------------------------------------------------------------- disk cache


def checkpoint_fingerprint(directory: Path) -> dict:
    """What identifies a checkpoint's weights without reading them: each weight file's
    resolved path, size and modification time (hub snapshots link to blobs named by
    their content hash, so the resolved path is itself a content key there)."""
    files = {}
    for path in sorted(Path(directory).iterdir()):
        if path.suffix in (".safetensors", ".bin") or path.name == "config.json":
            stat = path.stat()  # follows the snapshot's symlink to the blob
            files[path.name] = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return files


def cache_path(directory: Path, settings: QuantSettings, dtype: torch.dtype) -> Path:
    key = {
        "format": CACHE_FORMAT,
        "checkpoint": checkpoint_fingerprint(directory),
        "settings": asdict(settings),
        "dtype": str(dtype),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "quantized" / f"{Path(directory).name}-{settings.mode}-{digest}.safetensors"


def tensor_layout(state: dict[str, torch.Tensor]) -> dict[str, list]:
    """name -> [dtype, shape] of every tensor: what a cache file must hold for a model."""
    return {name: [str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in sorted(state.items())}


def _layout_digest(layout: dict[str, list]) -> str:
    return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()


def _cached_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a cache file holds: a tied LM head that stayed float is left out, as in the checkpoint."""
    state = model.state_dict()
    if model.lm_head.weight is model.embedding.weight:
        state.pop("lm_head.weight", None)
    return state


def save_quantized(model: nn.Module, path: Path, checkpoint: Path) -> None:
    """Write the quantized state dict with its format, layout digest and the checkpoint it was made
    from, atomically: a reader sees the old file or the whole new one, never a half-written one (a
    kill leaves only a temporary file, which remove_stale_temporaries deletes at the next start)."""
    state = {k: v.contiguous() for k, v in _cached_state(model).items()}
    metadata = {"format": "pt", "codegen_lsp_format": str(CACHE_FORMAT), "layout_sha256": _layout_digest(tensor_layout(state)),
                "checkpoint": str(Path(checkpoint).resolve()), "checkpoint_fingerprint": _fingerprint_text(checkpoint)}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        save_file(state, str(partial), metadata=metadata)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the name points to it
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete half-written cache files whose writer is gone (killed while writing)."""
    for partial in [*folder.glob(f"*{TEMPORARY_SUFFIX}"), *folder.glob("*.tmp[0-9]*")]:  # the latter: before format 2
        pid = partial.name.removesuffix(TEMPORARY_SUFFIX).rpartition(".")[2].removeprefix("tmp")
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        try:
            partial.unlink()
            log.info("removed a half-written cache file %s", partial)
        except OSError as exc:
            log.warning("cannot remove %s: %s", partial, exc)


def remove_dead_cache_files(folder: Path, keep: Path) -> None:
    """Delete the cache files no load can use again, so that the folder does not grow by a model's
    size at every checkpoint update: those of an older format, and those made from a checkpoint
    that has since changed or gone. A newer format's file belongs to another installed version
    and is left alone, as is anything that is not a regular file."""
    for path in sorted(folder.glob("*.safetensors")):
        if path == keep:
            continue
        why = _why_dead(path)
        if why is None:
            continue
        try:
            path.unlink()
            log.info("removed the quantized cache %s: %s", path, why)
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)


def _why_dead(path: Path) -> str | None:
    try:
        check_regular(path)
    except EngineError:
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:
        return "it is not a readable safetensors file"
    written = metadata.get("codegen_lsp_format", "")
    if not written.isdigit() or int(written) < CACHE_FORMAT:
        return f"format {written or 'unknown'}, now {CACHE_FORMAT}"
    if int(written) > CACHE_FORMAT or "checkpoint" not in metadata:
        return None
    try:
        fingerprint = _fingerprint_text(Path(metadata["checkpoint"]))
    except OSError:
        return f"its checkpoint {metadata['checkpoint']} is gone"
    if fingerprint != metadata.get("checkpoint_fingerprint"):
        return f"its checkpoint {metadata['checkpoint']} has changed since"
    return None


def _fingerprint_text(directory: Path) -> str:
    return json.dumps(checkpoint_fingerprint(directory), sort_keys=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours
        return True
    return pid != 0


def load_quantized(model_on_meta: nn.Module, config: ModelConfig, settings: QuantSettings, dtype: torch.dtype, path: Path) -> nn.Module | None:
    """The quantized model from a cache file, or None when the file is not exactly what this model needs.

    Before any tensor is read, the file's format, the digest of its header's layout and every
    tensor's name, dtype and shape are checked against the model built from config.json.
    """
    model = empty_quantized_model(model_on_meta.to(dtype), settings)
    tied = config.tie_word_embeddings and not isinstance(model.lm_head, (Int8Linear, Int4Linear))
    if tied:
        model.lm_head.weight = model.embedding.weight
    try:
        check_regular(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            found = {name: [str(f.get_slice(name).get_dtype()), list(f.get_slice(name).get_shape())] for name in f.keys()}
    except Exception as exc:  # truncated, corrupt, not a file: quantize again
        log.warning("ignoring unreadable quantized cache %s: %s", path, exc)
        return None
    found = {name: [_SAFETENSORS_DTYPES.get(dtype, dtype), shape] for name, (dtype, shape) in sorted(found.items())}
    # The token embedding as the file holds it, where that may be 16-bit (the checkpoint's dtype when it
    # was quantized: build.py; files written before kept it in dtype, which is as good).
    table = next(name for name, p in model.named_parameters() if p is model.embedding.weight)
    stored = {str(d).removeprefix("torch."): d for d in NARROW_TABLE_DTYPES}.get(found.get(table, [""])[0])
    if stored is not None and can_narrow_embedding(model, dtype):
        model.embedding.to(stored)
    expected = tensor_layout(_cached_state(model))
    problem = None
    if metadata.get("codegen_lsp_format") != str(CACHE_FORMAT):
        problem = f"format {metadata.get('codegen_lsp_format')!r}, expected {CACHE_FORMAT}"
    elif metadata.get("layout_sha256") != _layout_digest(found):
        problem = "its header does not match the digest written with it"
    elif found != expected:
        problem = f"it does not match the model ({_differences(found, expected)})"
    if problem:
        log.warning("quantized cache %s: %s; quantizing again", path, problem)
        return None
    try:
        state = load_file(str(path))
    except Exception as exc:
        log.warning("ignoring unreadable quantized cache %s: %s", path, exc)
        return None
    model.load_state_dict(state, strict=False, assign=True)
    if tied:  # assign=True replaced the embedding's weight alone
        model.lm_head.weight = model.embedding.weight
    narrow_embedding(model, dtype)  # a model computing in 16 bits keeps a plain Embedding of its dtype
    odd = next((name for name, m in model.named_modules() if isinstance(m, Int4Linear) and zero_points(m.scales_and_zeros) is None), None)
    if odd is not None:
        log.warning("quantized cache %s: %s has int4 zero points that quantize_int4 does not make; quantizing again", path, odd)
        return None
    return model.eval().requires_grad_(False)


def _differences(found: dict[str, list], expected: dict[str, list]) -> str:
    for name in sorted(set(found) | set(expected)):
        if found.get(name) != expected.get(name):
            return f"{name}: {found.get(name) or 'missing'} in the file, {expected.get(name) or 'not used'} expected"
    return "no difference"


# safetensors' dtype names -> torch's.
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8",
                       "I32": "int32", "I64": "int64", "F64": "float64", "BOOL": "bool", "I16": "int16"}  # fmt: skip


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers one decode step reads (embedding tables: one row only), of a
    model or of one layer."""
    skip = set()
    lm_head_weight = getattr(getattr(model, "lm_head", None), "weight", None)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight is not lm_head_weight:
            skip.add(module.weight.data_ptr())
        if isinstance(module, Int4Linear) and module.kernel != "dequantize":  # the packed copy is read
            skip.update({t.data_ptr() for t in (module.weight, module.scales_and_zeros) if t is not None})
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor is None or tensor.data_ptr() in seen or tensor.data_ptr() in skip:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.nbytes
    for module in model.modules():  # int8 decode on CPU reads bfloat16 scales, not the float32 ones
        if isinstance(module, Int8Linear) and module.scales_bf16 is not None:
            total -= module.scales.nbytes
    return total
