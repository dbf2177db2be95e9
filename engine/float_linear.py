"""float32 linear layers on the CPU: our decode kernel where it beats PyTorch's, per layer shape.

PyTorch's float32 matrix-vector product is MKL's sgemv, which on AMD CPUs takes a generic path:
on a Zen 4 EPYC it read a 2048 -> 8192 layer at 19 GB/s where our kernel
(engine/kernels/cpu_matvec.cpp, `float_matvec`) read it at 49-54, and the demo model's layers,
which sit in the CPU's caches, 2-3x faster still. FloatLinear keeps the checkpoint's weight as it
is (a tied LM head still shares the embedding's) and runs the kernel chosen for its shape at
load, ours or PyTorch's, timed side by side (engine/cpu_kernels.py), for up to
FLOAT_KERNEL_MAX_TOKENS tokens; longer inputs run PyTorch's matrix product.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import cpu_kernels
from engine.paths import cache_dir
from engine.quantize import set_module

# Up to this many tokens a call (a speculative verify's rows: engine/speculative.py's MAX_DRAFT + 1)
# runs the chosen kernel; beyond, PyTorch's matrix product. Ours re-reads every token's activations
# for each row: on a Zen 4 EPYC a layer alone was as fast in either at 9-17 tokens and 1.5-2x
# slower in ours at 33-64, but whole verifies of 9 and 17 rows cost 2.5x and 3.9x a decode step
# with ours against 4.2x and 4.8x with PyTorch's (demo model; codegen-350M shape 3.0x and 4.1x
# against 4.9x and 5.0x).
FLOAT_KERNEL_MAX_TOKENS = 17


class FloatLinear(nn.Linear):
    TIMED_FALLBACK = True  # PyTorch's kernel, the fallback, is timed beside ours: MKL is fast on some CPUs

    @classmethod
    def of(cls, linear: nn.Linear) -> "FloatLinear":
        """A FloatLinear holding linear's own parameters (no copy), running PyTorch's kernel until prepare()."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        module.weight, module.bias = linear.weight, linear.bias
        module.prepare("torch")
        return module

    def kernel_candidates(self) -> list[str]:
        return [*cpu_kernels.compiled_kernels(cache_dir() / "kernels"), "torch"]

    def prepare(self, kernel: str) -> None:
        self.kernel = kernel
        self.isa = kernel.removeprefix("cpp-") if kernel.startswith("cpp-") else ""

    def with_kernel(self, kernel: str) -> "FloatLinear":
        twin = copy.copy(self)  # the same parameters
        twin.prepare(kernel)
        return twin

    def shape_key(self) -> str:
        return f"float32 {self.in_features}->{self.out_features}"

    def reference(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return F.linear(x.double(), self.weight[rows].double(), None if self.bias is None else self.bias[rows].double()).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.isa and x.numel() <= FLOAT_KERNEL_MAX_TOKENS * self.in_features:
            return torch.ops.codegen_lsp_cpu.float_matvec(x, self.weight, self.bias, self.isa)
        return F.linear(x, self.weight, self.bias)


def use_float_kernels(model: nn.Module) -> None:
    """Swap each float32 nn.Linear of a CPU model (contiguous, as loaded) for a FloatLinear with the
    kernel chosen for its shape; quantized layers are no nn.Linear and stay as they are."""
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear and m.weight.dtype == torch.float32
               and m.weight.device.type == "cpu" and m.weight.is_contiguous()}  # fmt: skip
    if not linears:
        return
    modules = []
    for name, linear in linears.items():
        modules.append(FloatLinear.of(linear))
        set_module(model, name, modules[-1])
    cpu_kernels.choose_kernels(modules, cache_dir() / "quantized")
