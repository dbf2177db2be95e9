"""The CPU decode kernels of quantized layers (engine/cpu_kernels.py, engine/kernels/cpu_matvec.cpp):
each one against a float32 reference on layers of real shapes, the choice per shape and its cache,
the fallback without a compiler, and LM heads whose row count is no multiple of 16.

Layers here are random int8 / int4 codes with random scales (quantizing float weights would only
be slower), and outputs are compared on a subset of rows, as the load-time check does.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoints
from engine import cpu_kernels
from engine.bench import run_bench
from engine.generate import SamplingParams, generate
from engine.float_linear import FLOAT_KERNEL_MAX_TOKENS, FloatLinear
from engine.loading import load_model
from engine.paths import DEMO_MODEL_DIR, cache_dir
from engine.quantize import DECODE_KERNEL_MAX_TOKENS, Int4Linear, Int8Linear, unpack_int4, weight_bytes_per_token
from engine.session import Session
from greedy import greedy_with_logits

ROOT = Path(__file__).resolve().parents[1]
# (in, out) of santacoder (c_attn, attn c_proj, c_fc, mlp c_proj, lm_head), codegen-350M (qkv_proj,
# out_proj, fc_in, fc_out, lm_head), CodeGen's 50,295-token vocabulary and a tiny layer: row
# counts that are and are not multiples of the kernels' blocks.
SHAPES = [(2048, 2304), (2048, 2048), (2048, 8192), (8192, 2048), (2048, 49280),
          (1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024), (1024, 51200), (1024, 50295), (64, 13)]  # fmt: skip
# max |y - reference| / max |reference|: ours accumulate in float32 (int8) or exact int32 over
# 16-bit activations (int4); PyTorch's packed kernels round activations to bfloat16; our prefill
# products round them to 7 bits per 256 columns (int8) or 8 bits per weight group (int4).
BOUNDS = {"cpp": 3e-4, "int8pack": 2e-2, "int4pack": 2e-2, "dequantize": 1e-5}
PREFILL_BOUNDS = {"int8": 3e-2, "int4": 1e-2}


def bound(name: str) -> float:
    """A decode kernel's bound. Ours with x rounded to bytes per weight group ("-i8") round as the int4
    products do; on 64 columns (two groups) and 13 rows that reached 1.4e-2 (its exactness against
    that rounding: test_int4_decode_with_byte_activations_is_its_documented_rounding)."""
    return 2e-2 if name.endswith("-i8") else BOUNDS[name.partition("-")[0]]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEN_LSP_CACHE", str(tmp_path / "cache"))


def random_layer(mode: str, in_features: int, out_features: int, group_size: int = 32, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    if mode == "int8":
        layer = Int8Linear(in_features, out_features, bias=True, dtype=dtype)
        layer.weight = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
        layer.scales = torch.rand(out_features, generator=generator) * 1e-3 + 1e-4
    else:
        layer = Int4Linear(in_features, out_features, bias=True, group_size=group_size, dtype=dtype)
        layer.weight = torch.randint(0, 256, (out_features, in_features // 2), dtype=torch.uint8, generator=generator)
        # float16 scales and whole zero points z (w = (q - z) * scale), as quantize_int4 makes them: our kernel stores them so
        scales = (torch.rand(in_features // group_size, out_features, generator=generator) * 1e-2 + 1e-3).half().float()
        z = torch.randint(0, 16, scales.shape, generator=generator).float()
        layer.scales_and_zeros = torch.stack([scales, (8 - z) * scales], dim=-1)
    layer.bias.copy_(torch.randn(out_features, generator=generator) * 1e-2)
    return layer


def kernels_to_test(layer) -> list[str]:
    """Every kernel that runs here: PyTorch's, and ours in each instruction set this CPU has (the
    portable build included, which the choice skips where a SIMD one runs)."""
    names = layer.kernel_candidates()
    if any(name.startswith("cpp-") for name in names):
        ours = layer.our_kernels(torch.ops.codegen_lsp_cpu.isas().split())
        names = ours + [name for name in names if not name.startswith("cpp-")]
    return names


def with_product(layer, name: str):
    """layer.with_kernel(name), whose prefill product (ours) runs in name's instruction set too, not
    in the best one here: each product gets tested on a CPU that has several."""
    twin = layer.with_kernel(name)
    if name.startswith("cpp-"):
        twin.product_isa = twin.isa
    return twin


def check_rows(layer, x: torch.Tensor, y: torch.Tensor, bound: float) -> None:
    rows = torch.unique(torch.cat([torch.linspace(0, layer.out_features - 1, 200).long(),
                                   torch.arange(max(0, layer.out_features - 20), layer.out_features)]))
    reference = layer.reference(x.reshape(-1, layer.in_features), rows)
    error = (y.reshape(-1, layer.out_features)[:, rows] - reference).abs().max() / reference.abs().max()
    assert error <= bound, error


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{k}->{n}" for k, n in SHAPES])
def test_every_kernel_matches_the_float_reference(mode, shape):
    layer = random_layer(mode, *shape)
    x = torch.randn(3, shape[0], generator=torch.Generator().manual_seed(1))
    for name in kernels_to_test(layer):
        twin = layer.with_kernel(name)
        for tokens in (x[:1], x):  # decode, and a few tokens at once
            y = twin(tokens)
            assert y.shape == (len(tokens), shape[1]) and y.dtype == torch.float32, name
            check_rows(layer, tokens, y, bound(name))


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("shape", [(2048, 2304), (1056, 20), (256, 100), (64, 13)], ids=lambda s: f"{s[0]}->{s[1]}")
def test_each_row_of_a_decode_sized_call_is_its_one_token_result(mode, shape):
    """Up to DECODE_KERNEL_MAX_TOKENS tokens (a speculative verify), every row of ours and of PyTorch's
    packed kernels is bit for bit what the token alone gives (ours take up to 5 tokens a pass, fewer
    for the rest; 1056 columns end int8's int16-activation kernel in a short group of 32)."""
    layer = random_layer(mode, *shape)
    x = torch.randn(DECODE_KERNEL_MAX_TOKENS, shape[0], generator=torch.Generator().manual_seed(2))
    for name in kernels_to_test(layer):
        if name == "dequantize":
            continue  # a dense matmul: not row-exact (a verify's tie margin covers it)
        twin = layer.with_kernel(name)
        for tokens in (2, 3, 5, 9, DECODE_KERNEL_MAX_TOKENS):
            rows = twin(x[:tokens])
            for t in range(tokens):
                assert torch.equal(rows[t], twin(x[t : t + 1])[0]), (name, tokens, t)
        check_rows(layer, x[:5], rows[:5], bound(name))  # and right, not only alike


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("shape", [(2048, 2304), (1024, 50295), (256, 100), (64, 13)], ids=lambda s: f"{s[0]}->{s[1]}")
def test_a_long_prefill_matches_too(mode, shape):
    """Past DECODE_KERNEL_MAX_TOKENS our int8 kernel switches to its prefill product: token counts
    that end mid-tile, and (small layers) more tokens than one panel of activations (256 KB) holds."""
    layer = random_layer(mode, *shape)
    panels = [2 * (256 << 10) // shape[0] + 3] if shape[0] <= 256 else []
    for tokens in [DECODE_KERNEL_MAX_TOKENS + 7] + panels:
        x = torch.randn(1, tokens, shape[0], generator=torch.Generator().manual_seed(tokens))
        for name in kernels_to_test(layer):
            check_rows(layer, x, with_product(layer, name)(x), PREFILL_BOUNDS[mode] if name.startswith("cpp-") else bound(name))


def rounded_product(layer, x: torch.Tensor, isa: str, fused: bool = True) -> torch.Tensor:
    """What our prefill products compute, in float64: x rounded with one scale per row and group
    of columns (int8: to [-63, 63] per 256 columns, the last group maybe shorter, or [-127, 127]
    per 128 with AVX-512 VNNI; int4: to [-127, 127] per 128 columns where they divide K, else per
    weight group), times the integer weights exactly, then scaled. int4's AVX2 and AVX-512 products
    multiply by q - zero; the portable one by q per weight group of x, adding each group's offset
    times the exact sum of x."""
    int4 = isinstance(layer, Int4Linear)
    vnni = isa in ("avx512", "amx")  # AMX's int8 product gives the VNNI one's numbers; int4's is the VNNI one
    unpacked = int4 and isa in ("amx", "avx512", "avx2")  # int4 blocks unpacked to q - zero
    if int4:
        size = max(layer.group_size, 128) if unpacked and x.shape[1] % 128 == 0 else layer.group_size
        levels = 127
        weights = unpack_int4(layer.checkpoint_weight()).double()  # q in [0, 15]: w = q * scale + offset
        scales, zeros = layer.scales_and_zeros.float().unbind(-1)  # (groups, N); float16 scales in the kernel's layout
        scales = scales.half().double()
        offsets = zeros.double() - 8 * scales  # -z * scale, which the kernel computes exactly from z
        zero_points = torch.round(-offsets / scales)  # whole numbers (quantize_int4)
    else:
        size, levels = (128, 127) if vnni else (256, 63)
        weights = layer.weight.double()
    y = torch.zeros(len(x), layer.out_features, dtype=torch.float64)
    for start in range(0, x.shape[1], size):
        group = x[:, start : start + size]
        largest = group.abs().amax(1, keepdim=True)
        scale = torch.where(largest > 0, largest / levels, torch.ones_like(largest))
        # A build that fuses x * (1 / scale) + 1.5 * 2^23 into one multiply-add rounds the exact
        # product (ours for AVX2 and AVX-512); one that does not rounds the float32 product first.
        scaled = group.double() * (1 / scale).double() if fused else (group * (1 / scale)).double()
        rounded = torch.round(scaled)
        if not int4:
            y += (rounded @ weights[:, start : start + size].T) * scale.double()
            continue
        for g in range(start // layer.group_size, (start + size) // layer.group_size):
            columns = slice(g * layer.group_size - start, (g + 1) * layer.group_size - start)
            w = weights[:, g * layer.group_size : (g + 1) * layer.group_size]
            if unpacked:
                y += (rounded[:, columns] @ (w - zero_points[g, :, None]).T) * scale.double() * scales[g]
            else:
                y += (rounded[:, columns] @ w.T) * scale.double() * scales[g] + group[:, columns].double().sum(1, keepdim=True) * offsets[g]
    return y + layer.bias.double() if int4 else y * layer.scales.double() + layer.bias.double()


def product_error(layer, twin, x: torch.Tensor) -> float:
    """max |y - rounded_product| / max |rounded_product| of twin's prefill product on x (twin: layer
    set up for one of our kernels), the closer of the two ways of rounding (a build rounds one way
    throughout)."""
    y = twin(x).double()
    errors = []
    for fused in (True, False):
        expected = rounded_product(layer, x, twin.product_isa, fused)
        errors.append(((y - expected).abs().max() / expected.abs().max()).item())
    return min(errors)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("shape", [(2048, 2304), (1024, 37), (1040, 20), (64, 13)], ids=lambda s: f"{s[0]}->{s[1]}")
def test_the_prefill_products_are_their_documented_rounding(mode, shape):
    """The looser bounds above are the activations' rounding alone: the integer products are
    exact (a wrong offset for int8's unsigned weights, a lost group, row or nibble would be off by far more)."""
    if mode == "int4" and shape[0] % 32:
        shape = (shape[0] - shape[0] % 32, shape[1])  # int4 groups divide K
    layer = random_layer(mode, *shape)
    # 2,048 columns: 300 tokens are three panels of AVX-512's product (128 tokens of tiles each, the last short).
    tokens = 300 if shape[0] == 2048 else DECODE_KERNEL_MAX_TOKENS + 6
    x = torch.randn(tokens, shape[0], generator=torch.Generator().manual_seed(3)) * 3
    x[:, :7] = 0  # a group may start with zeros; rows of ties and large values too
    for name in kernels_to_test(layer):
        if name.startswith("cpp-"):
            twin = with_product(layer, name)
            assert product_error(layer, twin, x) < 1e-5, name


@pytest.mark.parametrize("group_size", [64, 128, 256])
def test_int4_prefill_products_are_their_documented_rounding_for_every_group_size(group_size):
    """The AVX2 and AVX-512 products scale x per 128 columns, so one x group holds two weight groups (64) or one
    (128); with groups of 256, or K = 576 (not a multiple of 128), x takes one scale per weight group."""
    for in_features in (1024, 576) if group_size == 64 else (1024,):
        layer = random_layer("int4", in_features, 40, group_size=group_size)
        x = torch.randn(DECODE_KERNEL_MAX_TOKENS + 21, in_features, generator=torch.Generator().manual_seed(5)) * 3
        for name in kernels_to_test(layer):
            if name.startswith("cpp-"):
                assert product_error(layer, with_product(layer, name), x) < 1e-5, (name, in_features)


@pytest.mark.parametrize("shape", [(2048, 2304), (8192, 2048), (1040, 37), (2064, 20), (80, 13), (64, 16)], ids=lambda s: f"{s[0]}->{s[1]}")
def test_amx_int8_product_gives_the_vnni_products_numbers(shape):
    """Where AMX tiles run, the int8 prefill product takes them, with the VNNI product's numbers bit for bit:
    tiles of 16 rows and 16 tokens with tails of both, columns no multiple of the tiles' 64, tokens over
    several panels (2 MB of activations each: 256 tokens of 8,192 columns), and int4 (its VNNI product)."""
    if not cpu_kernels.compiled_kernels(cache_dir() / "kernels") or not torch.ops.codegen_lsp_cpu.amx():
        pytest.skip("no AMX here")
    for mode in ("int8", "int4") if shape[0] % 32 == 0 else ("int8",):
        layer = random_layer(mode, *shape)
        tokens = 300 if shape[0] == 8192 else DECODE_KERNEL_MAX_TOKENS + 7
        x = torch.randn(tokens, shape[0], generator=torch.Generator().manual_seed(7)) * 3
        x[:, :5] = 0
        vnni, amx = with_product(layer, "cpp-avx512"), layer.with_kernel("cpp-avx512")
        amx.product_isa = "amx"
        assert torch.equal(amx(x), vnni(x)), mode
        assert product_error(layer, amx, x) < 1e-5, mode


@pytest.mark.parametrize("shape", [(2048, 2304), (1056, 20), (64, 13)], ids=lambda s: f"{s[0]}->{s[1]}")
def test_int8_decode_with_int16_activations_gives_the_same_numbers_in_both_builds(shape):
    """The AVX-512 build multiplies two rows a 512-bit register, the AVX2 build one row a 256-bit one: the
    same exact integer sums per group, then the same float steps, so the same outputs bit for bit, for one
    token and for a verify's rows (1056 columns end in a short group, 13 rows in a partial block)."""
    if "cpp-avx512" not in cpu_kernels.compiled_kernels(cache_dir() / "kernels"):
        pytest.skip("no AVX-512 here")
    layer = random_layer("int8", *shape)
    x = torch.randn(7, shape[0], generator=torch.Generator().manual_seed(3)) * 3
    wide, narrow = layer.with_kernel("cpp-avx512-i16"), layer.with_kernel("cpp-avx2-i16")
    for tokens in (1, 2, 5, 7):
        assert torch.equal(wide(x[:tokens]), narrow(x[:tokens])), tokens


@pytest.mark.parametrize("group_size", [32, 64, 256])
def test_int4_decode_with_byte_activations_is_its_documented_rounding(group_size):
    """int4's "-i8" decode kernel (AVX-512 VNNI) rounds x to [-127, 127] per weight group and adds each
    group's offset times the exact sum of x, as the portable product does: one token and a verify's rows."""
    layer = random_layer("int4", 1024, 40, group_size=group_size)
    if "cpp-avx512-i8" not in kernels_to_test(layer):
        pytest.skip("no AVX-512 VNNI here")
    twin = layer.with_kernel("cpp-avx512-i8")
    x = torch.randn(DECODE_KERNEL_MAX_TOKENS, 1024, generator=torch.Generator().manual_seed(6)) * 3
    x[:, :7] = 0
    for tokens in (1, 5, DECODE_KERNEL_MAX_TOKENS):
        y = twin(x[:tokens]).double()
        errors = [((y - expected).abs().max() / expected.abs().max()).item()
                  for expected in (rounded_product(layer, x[:tokens], "portable", fused) for fused in (True, False))]
        assert min(errors) < 1e-5, (tokens, errors)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_prefill_products_run_in_the_best_instruction_set_whichever_decode_kernel_won(mode):
    """Decode kernels of every instruction set read weights at the memory's speed, so the load-time
    choice may pick AVX2 on an AVX-512 CPU; the products are bound by arithmetic and must not follow."""
    layer = random_layer(mode, 256, 37)
    best = torch.ops.codegen_lsp_cpu.isas().split()[0] if cpu_kernels.compiled_kernels(cache_dir() / "kernels") else None
    if best == "avx512" and torch.ops.codegen_lsp_cpu.amx():
        best = "amx"
    for name in kernels_to_test(layer):
        twin = layer.with_kernel(name)
        assert twin.product_isa == (best if name.startswith("cpp-") else ""), name


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_switching_kernels_keeps_one_exact_copy_of_the_weight(mode):
    layer = random_layer(mode, 256, 37)
    original = layer.weight.clone()
    for name in kernels_to_test(layer) + ["dequantize"]:
        layer.prepare(name)
        assert (layer.weight is None) == name.startswith("cpp-"), name  # ours keep their packed copy alone
        assert torch.equal(layer.checkpoint_weight(), original), name


@pytest.mark.parametrize("group_size", [64, 128, 256])
def test_int4_kernels_take_every_group_size(group_size):
    layer = random_layer("int4", 1024, 520, group_size=group_size)
    x = torch.randn(DECODE_KERNEL_MAX_TOKENS + 5, 1024, generator=torch.Generator().manual_seed(4))
    for name in kernels_to_test(layer):
        twin = with_product(layer, name)
        check_rows(layer, x[:2], twin(x[:2]), bound(name))  # decode
        if name.startswith("cpp-"):  # and the prefill product
            assert product_error(layer, twin, x) < 1e-5, name


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_bfloat16_model_gets_bfloat16_outputs(mode):
    layer = random_layer(mode, 256, 64, dtype=torch.bfloat16)
    x = torch.randn(1, 1, 256, dtype=torch.bfloat16)
    for name in kernels_to_test(layer):
        y = layer.with_kernel(name)(x)
        assert y.shape == (1, 1, 64) and y.dtype == torch.bfloat16, name


FLOAT_SHAPES = [(2048, 2304), (8192, 2048), (1024, 4096), (256, 4096), (100, 37), (64, 13), (7, 5)]


def float_layer(in_features: int, out_features: int, bias: bool = True) -> FloatLinear:
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    return FloatLinear.of(linear.requires_grad_(False))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", FLOAT_SHAPES, ids=[f"{k}->{n}" for k, n in FLOAT_SHAPES])
def test_float32_kernels_match_float64_and_give_each_row_its_one_token_result(shape, bias):
    """Ours in every instruction set here (column counts that end mid-vector: 100, 7), against the
    product in float64; each row of a call is bit for bit its token's alone (tokens go two at a
    time); past FLOAT_KERNEL_MAX_TOKENS the layer runs PyTorch's matrix product."""
    needs_our_kernels()
    layer = float_layer(*shape, bias=bias)
    x = torch.randn(2 * FLOAT_KERNEL_MAX_TOKENS + 1, shape[0], generator=torch.Generator().manual_seed(3))
    reference = torch.nn.functional.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    for isa in torch.ops.codegen_lsp_cpu.isas().split():
        twin = layer.with_kernel(f"cpp-{isa}")
        for tokens in (1, 2, 5, FLOAT_KERNEL_MAX_TOKENS, 2 * FLOAT_KERNEL_MAX_TOKENS + 1):
            y = twin(x[None, :tokens])
            assert y.shape == (1, tokens, shape[1]) and y.dtype == torch.float32
            error = (y[0].double() - reference[:tokens]).abs().max() / reference.abs().max()
            assert error <= 1e-5, (isa, tokens, float(error))
            ours = torch.ops.codegen_lsp_cpu.float_matvec(x[:tokens], layer.weight, layer.bias, isa)
            ran = ours if tokens <= FLOAT_KERNEL_MAX_TOKENS else torch.nn.functional.linear(x[:tokens], layer.weight, layer.bias)
            assert torch.equal(y[0], ran), (isa, tokens)
            for t in {0, tokens // 2, tokens - 1}:
                assert torch.equal(ours[t], twin(x[t : t + 1])[0]), (isa, tokens, t)


def test_a_float32_model_runs_the_kernels_chosen_per_shape_with_its_lm_head_still_tied(stdlib_code):
    """Every linear layer of a float32 CPU model is a FloatLinear with the kernel measured for its
    shape (saved beside the quantized ones); the tied LM head is still the embedding's tensor, and
    greedy decoding gives PyTorch's tokens (where the reference's best two logits are not a tie)."""
    lm = load_model(str(DEMO_MODEL_DIR), device="cpu")
    linears = {name: m for name, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears and all(isinstance(m, FloatLinear) for m in linears.values())
    assert lm.model.lm_head.weight is lm.model.embedding.weight
    saved = json.loads((cache_dir() / "quantized" / cpu_kernels.CHOICES_FILE).read_text())["choices"]
    assert all(saved[m.shape_key()] == m.kernel for m in linears.values()), saved
    if cpu_kernels.compiled_kernels(cache_dir() / "kernels") and not any(m.isa for m in linears.values()):
        # The choice is a measurement: on a CPU where PyTorch's won every shape (the Intel Xeon, with
        # the demo's layers in its caches), ours run below all the same, so that the tokens test them.
        best = torch.ops.codegen_lsp_cpu.isas().split()[0]
        for module in linears.values():
            module.prepare(f"cpp-{best}")
    prompt = lm.tokenizer.encode(stdlib_code)[:200]
    tokens, logits = greedy_with_logits(lm, prompt, 24)
    for module in linears.values():
        module.prepare("torch")
    reference_tokens, reference = greedy_with_logits(lm, prompt, 24, follow=tokens)
    assert max((a - b).abs().max() for a, b in zip(logits, reference)) <= 1e-3
    below_best = [float(reference[i].max() - reference[i, token]) for i, token in enumerate(tokens)]
    assert max(below_best) <= 1e-3, below_best


def test_an_lm_head_left_unquantized_runs_the_float32_kernel_chosen_for_it(stdlib_code):
    """int8 with a float LM head: the head is a FloatLinear (ours where it won), the rest Int8Linear."""
    lm = load_model(str(DEMO_MODEL_DIR), device="cpu", quantization="int8", quantize_lm_head=False)
    assert isinstance(lm.model.lm_head, FloatLinear) and lm.model.lm_head.weight is lm.model.embedding.weight
    assert all(isinstance(m, Int8Linear) for name, m in lm.model.named_modules() if name.endswith(("c_attn", "c_fc")))
    saved = json.loads((cache_dir() / "quantized" / cpu_kernels.CHOICES_FILE).read_text())["choices"]
    assert saved[lm.model.lm_head.shape_key()] == lm.model.lm_head.kernel
    tokens, _ = greedy_with_logits(lm, lm.tokenizer.encode(stdlib_code)[:100], 4)
    assert len(tokens) == 4


def chosen_kernels(lm) -> dict[str, str]:
    return {name: m.kernel for name, m in lm.model.named_modules() if isinstance(m, (Int8Linear, Int4Linear))}


def test_int8_decode_with_the_chosen_kernels_gives_the_tokens_of_the_dequantized_path(stdlib_code):
    lm = load_model(str(DEMO_MODEL_DIR), device="cpu", quantization="int8")
    prompt = lm.tokenizer.encode(stdlib_code)[:200]
    chosen = chosen_kernels(lm)
    if cpu_kernels.compiled_kernels(cache_dir() / "kernels"):
        assert any(kernel.startswith("cpp-") for kernel in chosen.values()), chosen
    tokens, _ = greedy_with_logits(lm, prompt, 32)
    for module in lm.model.modules():
        if isinstance(module, Int8Linear):
            module.prepare("dequantize")
    reference_tokens, reference = greedy_with_logits(lm, prompt, 32, follow=tokens)  # the same context at every step
    # Our prefill rounds activations to 7 bits (engine/kernels/cpu_matvec.cpp), which moves these
    # logits by up to ~0.15: where the reference's best two are closer than TIE, either is right.
    # (Here one step is such a tie, 0.003 apart, which a change of summation order in the product
    # decided the other way.)
    TIE = 0.05
    below_best = [float(reference[i].max() - reference[i, token]) for i, token in enumerate(tokens)]
    assert max(below_best) <= TIE, (below_best, chosen)
    assert sum(a == b for a, b in zip(tokens, reference_tokens)) >= 30, (tokens, reference_tokens)


def test_the_choice_is_cached_per_machine_and_measured_again_when_the_key_differs(codegen_dir, tmp_path, monkeypatch):
    measured = []
    real_measure = cpu_kernels.measure

    def counted_measure(module, names):
        measured.append(module.shape_key())
        return real_measure(module, names)

    monkeypatch.setattr(cpu_kernels, "measure", counted_measure)
    first = chosen_kernels(load_model(str(codegen_dir), device="cpu", quantization="int8"))
    path = tmp_path / "cache" / "quantized" / cpu_kernels.CHOICES_FILE
    saved = json.loads(path.read_text())
    saved["choices"] = {name: choice for name, choice in saved["choices"].items() if not name.startswith(("attention ", "prefill attention ", "drafting "))}
    assert saved["key"] == cpu_kernels.machine_key() and set(saved["choices"]) == set(measured)
    assert len(measured) == len(set(measured)) < len(first)  # one layer per shape
    # A valid file is used as it is: "dequantize" everywhere shows it was read, not measured.
    path.write_text(json.dumps({**saved, "choices": {shape: "dequantize" for shape in saved["choices"]}}))
    measured.clear()
    assert set(chosen_kernels(load_model(str(codegen_dir), device="cpu", quantization="int8")).values()) == {"dequantize"}
    assert measured == []
    # Another CPU, torch, or choices made where ours could not be built (no compiler) or the other way round.
    for field, other in (("cpu", "Another CPU"), ("torch", "1.0.0"), ("our_kernels", not saved["key"]["our_kernels"])):
        path.write_text(json.dumps({"key": {**saved["key"], field: other},
                                    "choices": {shape: "dequantize" for shape in saved["choices"]}}))
        measured.clear()
        again = chosen_kernels(load_model(str(codegen_dir), device="cpu", quantization="int8"))
        assert sorted(measured) == sorted(saved["choices"]), field
        assert json.loads(path.read_text())["key"] == cpu_kernels.machine_key()
        assert set(again.values()) != {"dequantize"}


def test_a_small_model_generates_on_one_thread_and_a_large_one_on_all(codegen_dir, tmp_path):
    default = torch.get_num_threads()
    try:
        lm = load_model(str(codegen_dir), device="cpu")
        assert weight_bytes_per_token(lm.model) <= cpu_kernels.SMALL_MODEL_BYTES and lm.threads == 1
        saved = json.loads((tmp_path / "cache" / "quantized" / cpu_kernels.CHOICES_FILE).read_text())
        assert not [name for name in saved["choices"] if name.startswith("threads ")]  # a rule, not a measurement
        torch.set_num_threads(max(2, default))
        generate(Session(lm), [1, 2, 3], SamplingParams(max_new_tokens=2))
        assert torch.get_num_threads() == 1  # this thread's count, for its generations
        torch.set_num_threads(max(2, default))
        run_bench(lm, [1, 2, 3], new_tokens=2, repeat=1)
        assert torch.get_num_threads() == 1  # `codegen-lsp bench` times steps as generations take them
        assert cpu_kernels.threads_for(cpu_kernels.SMALL_MODEL_BYTES + 1) == cpu_kernels.default_threads() == default
    finally:
        torch.set_num_threads(default)


# (kv heads, query heads per kv head, head dim): santacoder (multi-query), Qwen2.5-Coder-1.5B and 0.5B,
# StarCoder2-3B (grouped), codegen-350M (multi-head), a small one.
ATTENTION_SHAPES = [(1, 16, 128), (2, 6, 128), (2, 7, 64), (2, 12, 128), (16, 1, 64), (3, 2, 32)]


def needs_our_kernels():
    if not cpu_kernels.compiled_kernels(cache_dir() / "kernels"):
        pytest.skip("our CPU kernels could not be built here")


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=["x".join(map(str, s)) for s in ATTENTION_SHAPES])
@pytest.mark.parametrize("keys", [1, 63, 64, 65, 700, 1500])
@pytest.mark.parametrize("peak", [1.0, 40.0])
def test_decode_attention_matches_sdpa(shape, keys, peak):
    """Ours, in every instruction set this CPU has, over a slice of a larger cache (rows a stride
    apart); peak 40 makes scores far apart (exp underflows for most keys)."""
    needs_our_kernels()
    kv_heads, group, head_dim = shape
    generator = torch.Generator().manual_seed(keys)
    cache = torch.randn(2, kv_heads, 2048, head_dim, generator=generator)
    k, v = cache[0, :, :keys], cache[1, :, :keys]
    q = torch.randn(kv_heads, group, head_dim, generator=generator) * peak
    scale = head_dim**-0.5
    reference = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale)[0]
    for isa in torch.ops.codegen_lsp_cpu.isas().split():
        out = torch.ops.codegen_lsp_cpu.attend_decode(q, k, v, scale, isa)
        assert out.shape == reference.shape
        # Rounding a score s costs ~|s| * 6e-8 of relative error after exp: bounds grow with the scores.
        assert (out - reference).abs().max() <= 1e-5 * peak * reference.abs().max(), isa


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=["x".join(map(str, s)) for s in ATTENTION_SHAPES])
@pytest.mark.parametrize("keys", [17, 64, 200, 1500])
def test_decode_attention_of_consecutive_tokens_equals_one_call_each(shape, keys):
    """A verify's 17 rows in one call: token t over the first keys - 16 + t keys, bit for bit the
    result of its own call (what a decode step computes)."""
    needs_our_kernels()
    kv_heads, group, head_dim = shape
    generator = torch.Generator().manual_seed(keys)
    cache = torch.randn(2, kv_heads, 2048, head_dim, generator=generator)
    q = torch.randn(17, kv_heads, group, head_dim, generator=generator)
    for isa in torch.ops.codegen_lsp_cpu.isas().split():
        rows = torch.ops.codegen_lsp_cpu.attend_decode(q, cache[0, :, :keys], cache[1, :, :keys], 0.1, isa)
        assert rows.shape == q.shape
        for t in range(17):
            n = keys - 16 + t
            alone = torch.ops.codegen_lsp_cpu.attend_decode(q[t], cache[0, :, :n], cache[1, :, :n], 0.1, isa)
            assert torch.equal(rows[t], alone), (isa, t)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=["x".join(map(str, s)) for s in ATTENTION_SHAPES])
@pytest.mark.parametrize("keys", [1, 65, 1500])
def test_decode_attention_over_a_float16_cache_is_that_of_its_numbers_in_float32(shape, keys):
    """Each float16 number is widened exactly where it is read: the result is bit for bit that of the
    same numbers in a float32 cache, for one token and for a verify's rows."""
    needs_our_kernels()
    kv_heads, group, head_dim = shape
    generator = torch.Generator().manual_seed(keys)
    cache = torch.randn(2, kv_heads, 2048, head_dim, generator=generator).half()
    k, v = cache[0, :, :keys], cache[1, :, :keys]
    for q in (torch.randn(kv_heads, group, head_dim, generator=generator), torch.randn(min(keys, 5), kv_heads, group, head_dim)):
        for isa in torch.ops.codegen_lsp_cpu.isas().split():
            half = torch.ops.codegen_lsp_cpu.attend_decode(q, k, v, 0.1, isa)
            assert torch.equal(half, torch.ops.codegen_lsp_cpu.attend_decode(q, k.float(), v.float(), 0.1, isa)), isa
    with pytest.raises(RuntimeError, match="float16"):  # keys and values alike
        torch.ops.codegen_lsp_cpu.attend_decode(q, k, v.float(), 0.1, "baseline")


def test_decode_attention_refuses_what_it_cannot_run():
    needs_our_kernels()
    q, k = torch.randn(1, 4, 48), torch.randn(1, 10, 48)  # a head dim no multiple of 32
    with pytest.raises(RuntimeError, match="multiple of 32"):
        torch.ops.codegen_lsp_cpu.attend_decode(q, k, k, 1.0, "baseline")
    with pytest.raises(RuntimeError, match="S >= T"):  # more new tokens than keys
        torch.ops.codegen_lsp_cpu.attend_decode(torch.randn(11, 1, 4, 64), torch.randn(1, 10, 64), torch.randn(1, 10, 64), 1.0, "baseline")
    with pytest.raises(RuntimeError, match="not available"):
        torch.ops.codegen_lsp_cpu.attend_decode(torch.randn(1, 4, 64), torch.randn(1, 10, 64), torch.randn(1, 10, 64), 1.0, "sve")


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=["x".join(map(str, s)) for s in ATTENTION_SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_decode_attention_with_its_cache_write_is_the_write_then_attend_decode(shape, dtype):
    """attend_decode_cached stores the new key and value (strided views, as the architectures have
    them) where copy_ would, rounded the same, and returns attend_decode over the keys up to them, bit
    for bit, laid out (1, 1, H * D)."""
    needs_our_kernels()
    kv_heads, group, head_dim = shape
    generator = torch.Generator().manual_seed(head_dim)
    for position in (0, 64, 1499):
        cache = torch.randn(2, 1, kv_heads, 1536, head_dim, generator=generator).to(dtype)
        expected = cache.clone()
        fused_qkv = torch.randn(kv_heads, 3 * head_dim, generator=generator)  # k and v every third head_dim
        k, v = fused_qkv[:, head_dim : 2 * head_dim], fused_qkv[:, 2 * head_dim :]
        q = torch.randn(1, kv_heads * group, 1, head_dim, generator=generator)
        expected[0, 0, :, position].copy_(k)
        expected[1, 0, :, position].copy_(v)
        for isa in torch.ops.codegen_lsp_cpu.isas().split():
            y = torch.ops.codegen_lsp_cpu.attend_decode_cached(q, k, v, cache[0], cache[1], position, 0.1, isa)
            assert torch.equal(cache, expected), isa
            alone = torch.ops.codegen_lsp_cpu.attend_decode(q.reshape(kv_heads, group, head_dim), expected[0, 0, :, : position + 1],
                                                           expected[1, 0, :, : position + 1], 0.1, isa)
            assert y.shape == (1, 1, kv_heads * group * head_dim) and torch.equal(y, alone.reshape(y.shape)), (isa, position)


def test_decode_attention_with_its_cache_write_refuses_what_it_cannot_run():
    needs_our_kernels()
    cache, q, kv = torch.zeros(2, 10, 64), torch.randn(8, 64), torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="position within capacity"):
        torch.ops.codegen_lsp_cpu.attend_decode_cached(q, kv, kv, cache, cache, 10, 1.0, "baseline")
    with pytest.raises(RuntimeError, match="KVH x D"):  # one head's key for a cache of two
        torch.ops.codegen_lsp_cpu.attend_decode_cached(q, kv[:1], kv, cache, cache, 3, 1.0, "baseline")
    with pytest.raises(RuntimeError, match="alike"):
        torch.ops.codegen_lsp_cpu.attend_decode_cached(q, kv, kv, cache, cache.half(), 3, 1.0, "baseline")
    assert not cache.any()  # nothing written by a refused call


@pytest.fixture
def attention_choices():
    """engine/kv_cache.py's per-shape attention choices, as they were before the test once it ends."""
    from engine.kv_cache import DECODE_ATTENTION, PREFILL_ATTENTION

    saved = dict(DECODE_ATTENTION), dict(PREFILL_ATTENTION)
    yield DECODE_ATTENTION, PREFILL_ATTENTION
    for chosen, before in zip((DECODE_ATTENTION, PREFILL_ATTENTION), saved):
        chosen.clear()
        chosen.update(before)


def greedy_with_sdpa_then_ours(lm, choices: dict, shape: tuple, prompt: list[int], n: int):
    """((tokens, logits) with SDPA for shape, then with ours forced there), greedy_with_logits' n each."""
    choices.pop(shape, None)
    with_sdpa = greedy_with_logits(lm, prompt, n)
    choices[shape] = torch.ops.codegen_lsp_cpu.isas().split()[0]
    return with_sdpa, greedy_with_logits(lm, prompt, n)


def test_decode_attention_is_chosen_once_per_machine_and_gives_the_tokens_of_sdpa(tmp_path, stdlib_code, monkeypatch, attention_choices):
    """A quantized load measures ours against SDPA for the model's shape and saves the choice; a model
    decoding with ours (forced here, whatever was chosen) gives SDPA's tokens and logits."""
    needs_our_kernels()
    decode_attention, _ = attention_choices
    directory = checkpoints.make_bigcode(tmp_path / "mq", multi_query=True, n_embd=128, n_head=4)  # head dim 32
    measured = []
    real_measure = cpu_kernels._measure_attention
    monkeypatch.setattr(cpu_kernels, "_measure_attention", lambda *args: measured.append(args) or real_measure(*args))
    lm = load_model(str(directory), device="cpu", quantization="int8")
    choices = json.loads((tmp_path / "cache" / "quantized" / cpu_kernels.CHOICES_FILE).read_text())["choices"]
    choice = choices["attention 1x4x32"]
    assert measured == [(1, 4, 32, cpu_kernels.compiled_kernels(cache_dir() / "kernels"))]
    assert (decode_attention.get((1, 4, 32)) is None) == (choice == "sdpa")
    load_model(str(directory), device="cpu", quantization="int8")
    assert len(measured) == 1  # read back, not measured again
    prompt = lm.tokenizer.encode(stdlib_code)[:300]
    (tokens, logits), (ours, our_logits) = greedy_with_sdpa_then_ours(lm, decode_attention, (1, 4, 32), prompt, 24)
    assert ours == tokens
    # 1e-4 with float activations; a kernel rounding them to int16 ("-i16") can turn the attention's
    # last-bit differences into one step of that rounding (measured 5e-4 over 24 tokens).
    assert (logits - our_logits).abs().max() < 2e-3


MAKERS = {  # each attention layout, its head dim 32: bigcode's [q | k | v] and per-head layouts, CodeGen's, Llama's
    "multi-query": lambda d: checkpoints.make_bigcode(d, multi_query=True, n_embd=128, n_head=4),
    "multi-head": lambda d: checkpoints.make_bigcode(d, multi_query=False, n_embd=128, n_head=4),
    "codegen": lambda d: checkpoints.make_codegen(d, n_embd=128, n_head=4, rotary_dim=16),
    "qwen2": lambda d: checkpoints.make_family(d, "qwen2", hidden_size=128),
}


@pytest.mark.parametrize("maker", MAKERS)
@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_decode_steps_write_the_cache_and_attend_in_one_op_with_the_same_logits(maker, quantization, tmp_path, stdlib_code,
                                                                                monkeypatch, attention_choices):
    """Where our decode attention runs (forced here), a decode step writes its key and value and attends
    in one op of ours (a float32 cache, or float16 with int8 weights): the tokens and logits, bit for bit,
    of the cache's update and attend() with PyTorch's ops around ours (update_then_attend)."""
    needs_our_kernels()
    from engine.kv_cache import HALF, KVCache

    directory = MAKERS[maker](tmp_path / maker)
    isa = torch.ops.codegen_lsp_cpu.isas().split()[0] + (HALF if quantization == "int8" else "")
    monkeypatch.setattr(cpu_kernels, "choose_attention", lambda *args: isa)  # the load sets DECODE_ATTENTION from it
    lm = load_model(str(directory), device="cpu", quantization=quantization)
    assert lm.cache_dtype == (torch.float16 if quantization == "int8" else torch.float32)
    prompt = lm.tokenizer.encode(stdlib_code)[:200]
    calls = []
    fused = torch.ops.codegen_lsp_cpu.attend_decode_cached
    monkeypatch.setattr(torch.ops.codegen_lsp_cpu, "attend_decode_cached", lambda *args: calls.append(args[5]) or fused(*args))
    tokens, logits = greedy_with_logits(lm, prompt, 12)
    assert len(calls) == 12 * lm.model.config.n_layer and calls[0] == len(prompt)  # each step after the prefill, each layer
    monkeypatch.setattr(KVCache, "update_and_attend", KVCache.update_then_attend)  # as before the fused op
    unfused_tokens, unfused_logits = greedy_with_logits(lm, prompt, 12)
    assert unfused_tokens == tokens and torch.equal(unfused_logits, logits)


PREFILL_SHAPES = [(4, 1, 32), (1, 8, 64), (2, 3, 16)]  # multi-head, multi-query, groups of 3 (rows across tokens)


@pytest.mark.parametrize("shape", PREFILL_SHAPES, ids=["x".join(map(str, s)) for s in PREFILL_SHAPES])
@pytest.mark.parametrize("tokens, keys", [(1, 1), (5, 5), (17, 60), (40, 40), (70, 300), (33, 1100)])  # the last: several chunks of keys at any head size
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_prefill_attention_is_sdpa_with_the_causal_mask(shape, tokens, keys, dtype):
    """A chunk of new tokens, the last of the keys, each seeing the keys up to its own: ours in every
    instruction set this CPU has equals SDPA given that mask (over the same numbers in float32), read
    from a slice of a larger cache, with q laid out as the architectures give it, and its output laid
    out as their output projections read it."""
    needs_our_kernels()
    kv_heads, group, head_dim = shape
    generator = torch.Generator().manual_seed(tokens * keys)
    cache = torch.randn(2, 1, kv_heads, 1200, head_dim, generator=generator).to(dtype)
    k, v = cache[0, :, :, :keys], cache[1, :, :, :keys]
    q = torch.randn(1, tokens, kv_heads * group, head_dim, generator=generator).transpose(1, 2) * 3
    mask = torch.arange(keys)[None, :] <= torch.arange(keys - tokens, keys)[:, None]
    reference = torch.nn.functional.scaled_dot_product_attention(q, k.float(), v.float(), attn_mask=mask, scale=0.2,
                                                                 enable_gqa=group > 1)
    for isa in torch.ops.codegen_lsp_cpu.isas().split():
        out = torch.ops.codegen_lsp_cpu.attend_prefill(q, k, v, 0.2, isa)
        assert out.shape == reference.shape and out.transpose(1, 2).is_contiguous()
        assert (out - reference).abs().max() <= 1e-5 * reference.abs().max(), isa


def test_prefill_attention_refuses_what_it_cannot_run():
    needs_our_kernels()
    k = torch.randn(1, 2, 10, 64)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        torch.ops.codegen_lsp_cpu.attend_prefill(torch.randn(1, 2, 3, 24), torch.randn(1, 2, 10, 24), torch.randn(1, 2, 10, 24), 1.0, "baseline")
    with pytest.raises(RuntimeError, match="S >= T"):  # more new tokens than keys
        torch.ops.codegen_lsp_cpu.attend_prefill(torch.randn(1, 2, 11, 64), k, k, 1.0, "baseline")
    with pytest.raises(RuntimeError, match="multiple of KVH"):
        torch.ops.codegen_lsp_cpu.attend_prefill(torch.randn(1, 3, 5, 64), k, k, 1.0, "baseline")
    with pytest.raises(RuntimeError, match="float16"):  # keys and values alike
        torch.ops.codegen_lsp_cpu.attend_prefill(torch.randn(1, 2, 5, 64), k.half(), k, 1.0, "baseline")


def test_small_prefill_chunks_attend_token_by_token_as_decode_steps(attention_choices):
    """A chunk of at most SMALL_CHUNK_ROWS query rows per key/value head (the few tokens a keystroke
    re-encodes) goes through the decode kernel, each token bit for bit its decode step's attention;
    a larger one through the prefill kernel (SDPA's numbers to ~1e-6), which would compute mostly
    empty lanes for the small one."""
    needs_our_kernels()
    from engine.kv_cache import SMALL_CHUNK_ROWS, CausalMask, attend, our_prefill_kernel

    decode_attention, prefill_attention = attention_choices
    isa = torch.ops.codegen_lsp_cpu.isas().split()[0]
    decode_attention[(4, 1, 32)] = prefill_attention[(4, 1, 32, torch.float32)] = prefill_attention[(1, 8, 32, torch.float32)] = isa
    generator = torch.Generator().manual_seed(0)
    cache = torch.randn(2, 1, 4, 300, 32, generator=generator)
    q = torch.randn(1, 8, 4, 32, generator=generator).transpose(1, 2)
    S = 200
    k, v = cache[0, :, :, :S], cache[1, :, :, :S]
    for T in (2, SMALL_CHUNK_ROWS, SMALL_CHUNK_ROWS + 1, 8):
        mask = CausalMask(torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None])
        chunk = attend(q[:, :, :T], k, v, mask)
        steps = torch.cat([attend(q[:, :, i : i + 1], k[:, :, : S - T + 1 + i], v[:, :, : S - T + 1 + i], None) for i in range(T)], dim=2)
        small = T <= SMALL_CHUNK_ROWS
        assert (our_prefill_kernel(q[:, :, :T], k) is None) == small
        assert torch.equal(chunk, steps) if small else (chunk - steps).abs().max() < 1e-5, T
    assert our_prefill_kernel(torch.zeros(1, 8, 1, 32), k[:, :1]) == isa  # 8 heads a kv head: 8 rows of one token
    assert our_prefill_kernel(torch.zeros(1, 4, 64, 32, dtype=torch.bfloat16), k) is None
    assert our_prefill_kernel(q, k.half()) is None  # chosen for a float32 cache only: a float16 one was not measured


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_prefill_attention_is_chosen_once_per_machine_and_gives_the_logits_of_sdpa(tmp_path, stdlib_code, monkeypatch, quantization,
                                                                                  attention_choices):
    """A load on the CPU measures ours against SDPA for the model's shape and cache dtype and saves the
    choice; prompts prefilled in chunks with ours (forced here, whatever was chosen) give SDPA's logits
    and greedy tokens, and the session's cache holds the same keys and values for the next request."""
    needs_our_kernels()
    from engine import session as session_module

    _, prefill_attention = attention_choices
    directory = checkpoints.make_codegen(tmp_path / "codegen", n_embd=128, n_head=4)  # head dim 32
    measured = []
    real_measure = cpu_kernels._measure_prefill_attention
    monkeypatch.setattr(cpu_kernels, "_measure_prefill_attention", lambda *args: measured.append(args[:4]) or real_measure(*args))
    monkeypatch.setattr(session_module, "PREFILL_CHUNK", 48)  # chunks after cached tokens, and a short last one
    lm = load_model(str(directory), device="cpu", quantization=quantization)
    choices = json.loads((tmp_path / "cache" / "quantized" / cpu_kernels.CHOICES_FILE).read_text())["choices"]
    (name,) = [name for name in choices if name.startswith("prefill attention ")]
    assert name == f"prefill attention 4x1x32 {str(lm.cache_dtype).removeprefix('torch.')}"
    assert measured == [(4, 1, 32, lm.cache_dtype)]
    assert (prefill_attention.get((4, 1, 32, lm.cache_dtype)) is None) == (choices[name] == "sdpa")
    load_model(str(directory), device="cpu", quantization=quantization)
    assert len(measured) == 1  # read back, not measured again
    prompt = lm.tokenizer.encode(stdlib_code)[:150]
    (tokens, logits), (ours, our_logits) = greedy_with_sdpa_then_ours(lm, prefill_attention, (4, 1, 32, lm.cache_dtype), prompt, 8)
    assert ours == tokens
    assert (logits - our_logits).abs().max() < 1e-4


def test_where_ours_over_a_float16_cache_is_chosen_sessions_keep_float16(tmp_path, stdlib_code, monkeypatch, attention_choices):
    """Half the bytes, the same tokens: a quantized model whose shape chose ours over float16 keeps
    its sessions' caches in float16 (prefill reads it through our prefill kernel or SDPA, cast; decode
    through ours); a float model of the same shape keeps float32 (its logits are checked against
    transformers')."""
    needs_our_kernels()
    from engine.kv_cache import HALF

    directory = checkpoints.make_bigcode(tmp_path / "mq", multi_query=True, n_embd=128, n_head=4)  # head dim 32
    prompt = [i % 1000 for i in range(300)]
    isa = torch.ops.codegen_lsp_cpu.isas().split()[0]
    results = {}
    for choice in (isa, isa + HALF):
        monkeypatch.setattr(cpu_kernels, "choose_attention", lambda *args, choice=choice: choice)
        lm = load_model(str(directory), device="cpu", quantization="int8")
        session = Session(lm)
        session.prefill(prompt)
        results[choice] = lm.cache_dtype, session.nbytes, greedy_with_logits(lm, prompt, 24)
    assert load_model(str(directory), device="cpu").cache_dtype == torch.float32  # float weights, same choice
    (dtype, nbytes, (tokens, logits)), (half_dtype, half_nbytes, (half_tokens, half_logits)) = results[isa], results[isa + HALF]
    assert (dtype, half_dtype) == (torch.float32, torch.float16) and half_nbytes * 2 == nbytes
    assert half_tokens == tokens
    assert (half_logits - logits).abs().max() <= 1e-2 * logits.abs().max()


def test_a_wrong_kernel_is_not_chosen(caplog):
    layer = random_layer("int8", 512, 256)
    real_forward = Int8Linear.forward

    def broken(self, x):  # the packed kernel with its rows in the wrong order
        y = real_forward(self, x)
        return y.flip(-1) if self.kernel == "int8pack" else y

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING, logger="engine.cpu_kernels"):
        patch.setattr(Int8Linear, "forward", broken)
        choice = cpu_kernels.measure(layer, layer.kernel_candidates())
    assert choice != "int8pack"
    assert [r.message for r in caplog.records if "int8pack" in r.message][0].startswith("CPU kernel int8pack is wrong")


def test_the_choice_times_a_verifys_rows_beside_one_token():
    """A kernel as fast as the others for one token but slow for a verify's rows is not chosen: read
    from memory, one token ties kernels whose arithmetic differs, and speculative decoding runs verifies."""
    from engine.speculative import FIRST_DRAFT

    assert cpu_kernels.VERIFY_TOKENS == FIRST_DRAFT + 1
    layer = random_layer("int8", 512, 256)
    candidates = layer.kernel_candidates()
    slow = cpu_kernels.measure(layer, candidates)  # the fastest, until verifies take it 10 ms longer
    real_forward = Int8Linear.forward

    def slow_for_several_tokens(self, x):
        if self.kernel == slow and x.numel() > self.in_features:
            time.sleep(0.01)
        return real_forward(self, x)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Int8Linear, "forward", slow_for_several_tokens)
        assert cpu_kernels.measure(layer, candidates) != slow


@pytest.mark.parametrize("make", [checkpoints.make_codegen, checkpoints.make_bigcode], ids=["codegen", "bigcode"])
def test_int4_lm_head_whose_rows_are_no_multiple_of_16(make, tmp_path, stdlib_code):
    directory = make(tmp_path / "model", vocab_size=50295)  # CodeGen's tokenizer size: 16 * 3143 + 7
    reference = load_model(str(directory), device="cpu")
    lm = load_model(str(directory), device="cpu", quantization="int4")
    head = lm.model.lm_head
    assert isinstance(head, Int4Linear) and head.out_features == 50295
    x = torch.randn(2, head.in_features)
    for name in head.kernel_candidates():  # the padded int4pack layout and ours
        y = head.with_kernel(name)(x)
        assert y.shape == (2, 50295), name
        check_rows(head, x, y, bound(name))
    prompt = lm.tokenizer.encode(stdlib_code)[:32]
    tokens, logits = greedy_with_logits(lm, prompt, 8)
    _, reference_logits = greedy_with_logits(reference, prompt, 8, follow=tokens)
    assert all(t < 50295 for t in tokens) and logits[0].shape == (50295,)
    assert max((a - b).abs().max() / b.std() for a, b in zip(logits, reference_logits)) < 1.4


def test_without_a_compiler_int8_loads_with_one_log_line(tmp_path):
    """A fresh cache and no compiler on PATH: the build fails, one warning says so, PyTorch's kernels
    run (for int8 and for float32 layers), also for a verify's rows with int8 weights read back from
    the disk cache."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if shutil.which("ninja"):  # keep ninja, so that it is the compiler that is missing
        (bin_dir / "ninja").symlink_to(shutil.which("ninja"))
    script = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s %(message)s')\n"
        "from engine.loading import load_model\n"
        "from engine.session import Session\n"
        "lm = load_model(None, device='cpu', quantization='int8')\n"
        "session, tokens = Session(lm), []\n"
        "logits, _ = session.prefill(lm.tokenizer.encode('def add(a, b):'))\n"
        "for _ in range(4): tokens.append(int(logits.argmax())); logits = session.step(tokens[-1])\n"
        "print(tokens)\n"
        "print(sorted({m.kernel for m in lm.model.modules() if hasattr(m, 'kernel')}))\n"
        "lm = load_model(None, device='cpu')\n"  # float32: the same fallback, no second warning
        "logits, _ = Session(lm).prefill(lm.tokenizer.encode('def add(a, b):'))\n"
        "print(sorted({m.kernel for m in lm.model.modules() if hasattr(m, 'kernel')}))\n"
        "lm = load_model(None, device='cpu', quantization='int8')\n"  # from the disk cache
        "session = Session(lm)\n"
        "session.prefill(lm.tokenizer.encode('def add(a, b):'))\n"
        "print(list(session.verify(tokens).shape))\n"
    )
    env = {**os.environ, "CXX": "/nonexistent", "CC": "/nonexistent", "PATH": str(bin_dir), "CODEGEN_LSP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tokens, kernels, float_kernels, verified = done.stdout.strip().splitlines()
    assert json.loads(verified) == [4, json.loads((DEMO_MODEL_DIR / "config.json").read_text())["vocab_size"]]
    assert len(json.loads(tokens)) == 4 and "cpp" not in kernels and json.loads(float_kernels.replace("'", '"')) == ["torch"]
    warnings = [line for line in done.stderr.splitlines() if "cpu_kernels" in line and line.startswith("WARNING")]
    assert len(warnings) == 1 and "CPU decode kernels unavailable" in warnings[0], done.stderr
    assert "Traceback" not in done.stderr and "!! WARNING !!" not in done.stderr, done.stderr


def test_the_process_that_builds_the_kernels_saves_its_choices_under_the_key_of_later_ones(tmp_path):
    """A first load on a machine builds ours (a fresh cache, in a process of its own) and saves the
    kernel choices; the key they are saved under is the one any later process computes, so a second
    load measures nothing (the build once changed the kernel-source digest in its own process)."""
    script = "from engine.loading import load_model\nload_model(None, device='cpu')\n"  # the cache: private_cache's
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    saved = json.loads((cache_dir() / "quantized" / cpu_kernels.CHOICES_FILE).read_text())
    assert saved["key"]["kernel_source"] == cpu_kernels.source_digest()
    assert saved["key"] == cpu_kernels.machine_key()


def test_builds_of_other_sources_unused_for_a_month_are_removed(tmp_path):
    """Each change of the kernel source or of torch leaves a library behind: loading one marks it
    used now, and any other build unused for STALE_BUILD_DAYS goes (a recent one stays: another
    checkout on the machine may load it)."""
    used, recent, stale, stale_partial = (tmp_path / name for name in (
        "cpu_matvec-x86_64-torch-aaaa.so", "cpu_matvec-x86_64-torch-bbbb.so", "cpu_matvec-x86_64-torch-cccc.so",
        "cpu_matvec-x86_64-torch-dddd.so.123.partial"))
    unrelated = tmp_path / "cpu-kernels.json"
    long_ago = os.path.getmtime(tmp_path) - (cpu_kernels.STALE_BUILD_DAYS + 1) * 86400
    for path in (used, recent, stale, stale_partial, unrelated):
        path.write_bytes(b"")
        if path != recent:
            os.utime(path, (long_ago, long_ago))
    cpu_kernels.remove_stale_builds(tmp_path, used)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([used.name, recent.name, unrelated.name])
    assert used.stat().st_mtime > long_ago + cpu_kernels.STALE_BUILD_DAYS * 86400  # marked used now


def test_gelu_matches_the_tanh_formula_in_float64():
    """Our GELU (tanh approximation), every instruction set, lengths that leave partial vectors and
    a parallel split, against the formula in float64; the models' activation uses it where loaded."""
    needs_our_kernels()
    from engine import config

    x = torch.cat([torch.randn(8191) * 3, torch.linspace(-30, 30, 70001), torch.tensor([0.0, -0.0, 88.0, -88.0, 1e4, -1e4])])
    reference = torch.nn.functional.gelu(x.double(), approximate="tanh")
    visible = reference.abs() > 1e-6
    for isa in torch.ops.codegen_lsp_cpu.isas().split():
        for n in (1, 7, 4096, len(x)):
            y = torch.ops.codegen_lsp_cpu.gelu_tanh(x[:n], isa).double()
            assert (y - reference[:n]).abs().max() < 1e-6, (isa, n)
            assert ((y - reference[:n]).abs() / reference[:n].abs())[visible[:n]].max() < 2e-6, (isa, n)
    assert config.CPU_OPS_ISA is not None
    h = torch.randn(2, 3, 1024)
    assert torch.equal(config.ACTIVATIONS["gelu_new"](h), torch.ops.codegen_lsp_cpu.gelu_tanh(h, config.CPU_OPS_ISA))
    assert torch.ops.codegen_lsp_cpu.gelu_tanh(h.bfloat16(), "baseline").dtype == torch.bfloat16


def test_rms_norm_matches_the_formula_in_float64_row_by_row():
    """Our RMSNorm, every instruction set, widths that leave partial vectors, against the formula in
    float64 (as close as PyTorch's own ops come); each row as it comes alone (a verify's rows are their
    decode steps'); the Llama-style models' norm uses it where loaded, PyTorch's ops elsewhere."""
    needs_our_kernels()
    from engine import config
    from engine.layers import RMSNorm

    for D in (1, 7, 64, 100, 896, 1536, 2049):
        x, w = torch.randn(3, 5, D) * 3, torch.randn(D)
        reference = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
        for isa in torch.ops.codegen_lsp_cpu.isas().split():
            y = torch.ops.codegen_lsp_cpu.rms_norm(x, w, 1e-6, isa)
            assert (y.double() - reference).abs().max() < 4e-6 * reference.abs().max(), (isa, D)
            alone = torch.ops.codegen_lsp_cpu.rms_norm(x[1:2, 3:4], w, 1e-6, isa)
            assert torch.equal(alone, y[1:2, 3:4]), (isa, D)
    norm = RMSNorm(1536, 1e-6)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 4, 1536)
    with torch.no_grad():
        assert torch.equal(norm(x), torch.ops.codegen_lsp_cpu.rms_norm(x, norm.weight, 1e-6, config.CPU_OPS_ISA))
        pytorchs = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
        torch.testing.assert_close(norm(x), pytorchs, rtol=2e-6, atol=2e-6)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.codegen_lsp_cpu.rms_norm(x.double(), norm.weight, 1e-6, "baseline")
    with torch.no_grad():  # a bfloat16 model: PyTorch's ops, in the original's precision
        assert norm.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("rot_dim", [32, 64])
def test_interleaved_rotary_is_pytorchs_numbers_in_one_op(rot_dim, monkeypatch):
    """CodeGen's q and k as the model hands them (every second of [q | v | k]: a strided 6-dim view, its
    positions in dim 1 or, moved, in dim 2), rotated by our op and by PyTorch's ops: the same numbers,
    each position's its one-position result."""
    from engine import config
    from engine.layers import Rope, apply_rotary_interleaved, rotary_sin_cos

    needs_our_kernels()
    for tokens in (1, 7, 300):
        qkv = torch.randn(1, tokens, 4, 3, 4, 64, generator=torch.Generator().manual_seed(tokens))
        sin, cos = rotary_sin_cos(torch.arange(40, 40 + tokens), Rope().inverse_frequencies(rot_dim, "cpu"), interleaved=True)
        for qk, position_dim in ((qkv[:, :, :, ::2], 1), (qkv[:, :, :, ::2].movedim(3, 0), 2)):
            ours = apply_rotary_interleaved(qk, sin, cos, position_dim)
            with monkeypatch.context() as patch:
                patch.setattr(config, "CPU_OPS_ISA", None)
                theirs = apply_rotary_interleaved(qk, sin, cos, position_dim)
            assert ours.shape == qk.shape and ours.is_contiguous() and torch.equal(ours, theirs)
            assert not torch.equal(ours[..., :rot_dim], qk[..., :rot_dim]) and torch.equal(ours[..., rot_dim:], qk[..., rot_dim:])
            last = apply_rotary_interleaved(qk.narrow(position_dim, tokens - 1, 1), sin[-1:], cos[-1:], position_dim)
            assert torch.equal(last, ours.narrow(position_dim, tokens - 1, 1))


def test_rotary_halves_is_pytorchs_numbers_in_one_op(monkeypatch):
    """Llama's rotary (StarCoder2, Qwen2, DeepSeek), q as the model hands it (a transposed view), by our op
    and by PyTorch's ops: the same numbers, each position's its one-position result."""
    from engine import config
    from engine.layers import Rope, apply_rotary_halves, rotary_sin_cos

    needs_our_kernels()
    for tokens in (1, 7, 300):
        q = torch.randn(1, tokens, 6, 64, generator=torch.Generator().manual_seed(tokens)).transpose(1, 2)
        sin, cos = rotary_sin_cos(torch.arange(40, 40 + tokens), Rope().inverse_frequencies(64, "cpu"), interleaved=False)
        ours = apply_rotary_halves(q, sin, cos)
        with monkeypatch.context() as patch:
            patch.setattr(config, "CPU_OPS_ISA", None)
            theirs = apply_rotary_halves(q, sin, cos)
        assert ours.shape == q.shape and ours.is_contiguous() and torch.equal(ours, theirs) and not torch.equal(ours, q)
        assert torch.equal(apply_rotary_halves(q[:, :, -1:], sin[-1:], cos[-1:]), ours[:, :, -1:])
