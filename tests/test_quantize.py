"""Weight-only quantization, its disk cache and compiled decode, on tiny checkpoints.

Bounds are loose on purpose: they catch a broken quantizer (wrong layout,
wrong scale, wrong kernel) without pinning float noise.
"""

import json
import logging

import pytest
import torch

import checkpoints
from engine import cpu_kernels
from engine.errors import EngineError
from engine.loading import load_model
from engine.paths import cache_dir
from engine.quantize import weight_bytes_per_token
from engine.quantize import (
    Int4Linear,
    Int8Linear,
    NarrowEmbedding,
    QuantSettings,
    dequantize_int4,
    dequantize_int8,
    pack_int4_for_cpu,
    pack_int8_for_cpu,
    quantize_int4,
    quantize_int8,
    quantize_model,
    unpack_int4,
    unpack_int4_for_cpu,
    unpack_int4_scales_for_cpu,
    unpack_int8_for_cpu,
)
from engine.session import Session
from greedy import greedy_with_logits

NEW_TOKENS = 16
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEN_LSP_CACHE", str(tmp_path / "cache"))


def needs_our_kernels():
    """Our layouts are made by ops of ours (built once per session: tests/conftest.py)."""
    if not cpu_kernels.compiled_kernels(cache_dir() / "kernels"):
        pytest.skip("our CPU kernels could not be built here")


def greedy(lm, prompt: list[int], n: int = NEW_TOKENS, follow: list[int] | None = None):
    return greedy_with_logits(lm, prompt, n, follow)


@pytest.fixture(scope="module")
def prompt_ids(stdlib_code, codegen_dir):
    return load_model(str(codegen_dir), device="cpu").tokenizer.encode(stdlib_code)[:48]


def test_int8_round_trip_is_within_half_a_step():
    w = torch.randn(96, 64) * 0.05
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and scales.shape == (96,)
    error = (dequantize_int8(q, scales) - w).abs()
    assert torch.all(error <= scales[:, None] / 2 + 1e-7)
    assert q.abs().amax() == 127  # the largest weight of each row uses the full range


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_round_trip_is_within_half_a_step(group_size):
    w = torch.randn(48, 128) * 0.05
    packed, scales_and_zeros = quantize_int4(w, group_size)
    assert packed.shape == (48, 64) and packed.dtype == torch.uint8
    assert scales_and_zeros.shape == (128 // group_size, 48, 2)
    step = scales_and_zeros[..., 0].transpose(0, 1).repeat_interleave(group_size, dim=1)  # (N, K)
    error = (dequantize_int4(packed, scales_and_zeros, group_size) - w).abs()
    # A group's largest weight may lie half a step past the grid (the zero point is a whole number of
    # steps), and its float16 scale is within 2^-11 of the exact one: 15 steps within 1 % of a step.
    assert torch.all(error <= step * 0.51)
    q = unpack_int4(packed)
    assert q.min() == 0 and q.max() == 15


def test_int4_zero_points_are_whole_steps_that_our_cpu_layout_packs_in_four_bits():
    """w = (q - z) * scale with z a whole number in [0, 15], so q = z decodes to exactly 0 and our
    CPU kernel stores a group of 8 rows' zero points in 4 bytes beside their float16 scales."""
    needs_our_kernels()
    w = torch.randn(24, 128) * 0.05
    w[3, :32] = w[3, :32].abs() + 0.01  # a group with no negative weight: z = 0
    w[5, 32:64] = -w[5, 32:64].abs() - 0.01  # none positive: z = 15
    packed, scales_and_zeros = quantize_int4(w, 32)
    scales, zeros = scales_and_zeros.unbind(-1)
    z = 8 - zeros / scales
    assert torch.equal(z, z.round()) and z.min() == 0 and z.max() == 15
    assert z[0, 3] == 0 and z[1, 5] == 15
    layout = pack_int4_for_cpu(packed, scales_and_zeros, 32)
    assert layout.shape == (3, 4, 4 * 32 + 20)  # 8-row blocks, groups, weights + 8 scales + 8 zero points
    assert torch.equal(unpack_int4_for_cpu(layout, 24), packed)
    assert torch.equal(unpack_int4_scales_for_cpu(layout, 24), scales_and_zeros)
    tail = layout[:, :, 128:]
    assert torch.equal(tail[:, :, :16].contiguous().view(torch.float16).float(), scales.view(4, 3, 8).transpose(0, 1))
    nibbles = torch.stack([tail[:, :, 16:] & 15, tail[:, :, 16:] >> 4], dim=-1).reshape(3, 4, 8)
    assert torch.equal(nibbles.float(), z.view(4, 3, 8).transpose(0, 1))
    with pytest.raises(EngineError, match="zero points"):
        pack_int4_for_cpu(packed, torch.stack([scales, zeros + scales / 3], dim=-1), 32)


def test_our_int4_layout_is_the_only_copy_in_memory(codegen_dir):
    """Packed for our CPU kernel, a layer holds its weights, scales and zero points once (float32
    scales and zeros beside them took a quarter of a byte a weight), and still gives what they give."""
    lm = load_model(str(codegen_dir), device="cpu", quantization="int4")
    ours = [m for m in lm.model.modules() if isinstance(m, Int4Linear) and m.kernel.startswith("cpp-")]
    if not ours:
        pytest.skip("our CPU kernels are not built here")
    x = torch.randn(2, ours[0].in_features)
    for module in ours:
        assert module.weight is None and module.scales_and_zeros is None
        assert sum(b.nbytes for b in module.buffers()) == module.packed.nbytes
    rows = torch.arange(ours[0].out_features)
    reference = ours[0].reference(x, rows)
    # int16 activations are within float32's last bits of the reference; bytes (the "-i8" kernel) per
    # weight group within their rounding (tests/test_cpu_kernels.py bounds both).
    bound = 2e-2 if ours[0].kernel.endswith("-i8") else 1e-4
    assert (ours[0](x) - reference).abs().max() <= bound * reference.abs().max()
    twin = ours[0].with_kernel("dequantize")  # back to the checkpoint layout, exactly
    assert torch.equal(twin.scales_and_zeros, ours[0].checkpoint_scales_and_zeros()) and twin.weight is not None
    assert ours[0].packed is not None and ours[0].scales_and_zeros is None


@pytest.mark.parametrize("checkpoint", ["qwen2 bfloat16, tied", "codegen float16 .bin, untied"])
def test_a_quantized_model_keeps_its_16_bit_embedding_with_the_numbers_of_a_float32_one(checkpoint, codegen_bin_dir, tmp_path, caplog):
    """The token embedding stays in the checkpoint's bfloat16 / float16 beside quantized layers, at the
    first load and from the disk cache; its rows are widened as looked up, so the logits are exactly
    those of the float32 table every quantized model held before. A float LM head sharing the table
    keeps it float32."""
    directory = checkpoints.make_family(tmp_path / "qwen2", "qwen2", dtype=torch.bfloat16) if "qwen2" in checkpoint else codegen_bin_dir
    narrow = torch.bfloat16 if "qwen2" in checkpoint else torch.float16
    first = load_model(str(directory), device="cpu", quantization="int8")  # quantizes and writes the cache
    with caplog.at_level(logging.INFO, logger="engine.build"):
        cached = load_model(str(directory), device="cpu", quantization="int8")
    assert "quantized weights read from" in caplog.text
    prompt = first.tokenizer.encode("def fib(n):\n    if n < 2:\n        return n\n")
    tokens, logits = greedy(first, prompt)
    for lm in (first, cached):
        assert lm.model.embedding.weight.dtype == narrow
        assert torch.equal(greedy(lm, prompt)[1], logits)
    embedding = cached.model.embedding  # as before: a float32 table
    embedding.__class__, embedding.weight = torch.nn.Embedding, torch.nn.Parameter(embedding.weight.float(), requires_grad=False)
    assert torch.equal(greedy(cached, prompt)[1], logits)
    if "qwen2" in checkpoint:
        float_head = load_model(str(directory), device="cpu", quantization="int8", quantize_lm_head=False)
        assert float_head.model.embedding.weight.dtype == torch.float32
        assert float_head.model.lm_head.weight is float_head.model.embedding.weight


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantizing_in_passes_gives_the_numbers_of_one_pass(mode, monkeypatch):
    """quantize_int8 / quantize_int4 go through a layer in passes of rows (QUANTIZE_CHUNK weights):
    passes of 3 rows (the last shorter) give exactly the numbers of the whole layer at once."""
    weight = (torch.randn(37, 128, generator=torch.Generator().manual_seed(3)) * 0.05).to(torch.bfloat16)
    quantize = quantize_int8 if mode == "int8" else lambda w: quantize_int4(w, 32)
    monkeypatch.setattr("engine.quantize.QUANTIZE_CHUNK", 1 << 30)
    whole = quantize(weight)
    monkeypatch.setattr("engine.quantize.QUANTIZE_CHUNK", 3 * 128)
    for ours, expected in zip(quantize(weight), whole):
        assert torch.equal(ours, expected)
    assert whole[0].shape == ((37, 128) if mode == "int8" else (37, 64))


@pytest.mark.parametrize("rows, offset", [(8, 0), (37, 0), (8, 3)])
def test_int8_cpu_layout_is_blocks_of_four_rows_sixteen_columns_at_a_time(rows, offset):
    """pack_int8_for_cpu: rows padded to a multiple of 4, each block's 4 rows interleaved by 16 columns,
    from any weight (here one whose bytes start at an odd place in their storage) and back exactly."""
    needs_our_kernels()
    storage = torch.randint(-127, 128, (rows * 64 + offset,), dtype=torch.int8, generator=torch.Generator().manual_seed(rows))
    weight = storage[offset:].view(rows, 64)
    layout = pack_int8_for_cpu(weight)
    blocks = -(-rows // 4)
    assert layout.shape == (blocks, 4, 4, 16)
    padded = torch.cat([weight, torch.zeros(blocks * 4 - rows, 64, dtype=torch.int8)])
    for b, chunk, r in [(0, 0, 0), (0, 1, 3), (blocks - 1, 3, 2)]:
        assert torch.equal(layout[b, chunk, r], padded[4 * b + r, 16 * chunk : 16 * chunk + 16])
    assert torch.equal(unpack_int8_for_cpu(layout, rows), weight)


def test_int4_packing_keeps_column_order():
    q = torch.randint(0, 16, (8, 32), dtype=torch.uint8)
    packed = (q[:, ::2] << 4) | q[:, 1::2]
    assert torch.equal(unpack_int4(packed), q.to(torch.int32))


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("tokens", [1, 7])
def test_cpu_kernels_match_the_dequantized_matmul(mode, tokens):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96)
    model = torch.nn.Sequential(linear)
    quantize_model(model, QuantSettings(mode, group_size=32))
    module = model[0]
    assert isinstance(module, Int8Linear if mode == "int8" else Int4Linear)
    if mode == "int8":
        reference_weight = dequantize_int8(module.weight, module.scales)
    else:
        reference_weight = dequantize_int4(module.weight, module.scales_and_zeros, 32)
    x = torch.randn(1, tokens, 128)
    expected = torch.nn.functional.linear(x, reference_weight, linear.bias)
    module.prepare()  # picks the packed CPU kernel where torch has it
    got = module(x)
    assert got.shape == expected.shape and got.dtype == x.dtype
    # int8 decode runs with bfloat16 activations: allow bfloat16 rounding.
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)


def test_pytorchs_int8_kernel_gets_a_weight_it_can_read_for_a_verifys_rows():
    """torch 2.13's _weight_int8pack_mm reads the weight with aligned loads from 4 tokens on, and a
    weight loaded from a safetensors file may lie 8 bytes off a 16-byte boundary: the process died (a
    segfault) on the first verify of a first draft, or on timing one. prepare() gives it an aligned copy."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        pytest.skip("this torch has no packed int8 CPU kernel")
    module = Int8Linear(1024, 256, bias=False)
    q, scales = quantize_int8(torch.randn(256, 1024, generator=torch.Generator().manual_seed(0)))
    room = torch.empty(q.numel() + 64, dtype=torch.int8)
    module.weight = room[8 : 8 + q.numel()].view(q.shape).copy_(q)  # as a file's tensor may lie
    module.scales.copy_(scales)
    assert module.weight.data_ptr() % 64
    module.prepare("int8pack")
    assert module.weight.data_ptr() % 64 == 0 and torch.equal(module.weight, q)
    x = torch.randn(5, 1024, generator=torch.Generator().manual_seed(1))
    reference = x @ dequantize_int8(q, scales).T
    assert (module(x) - reference).abs().max() <= 2e-2 * reference.abs().max()  # bfloat16 activations


@pytest.mark.parametrize("checkpoint", ["codegen", "bigcode_mq", "bigcode_mh", "starcoder2", "deepseek", "qwen2"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_every_mode_runs_and_tracks_float32(request, checkpoint, mode, prompt_ids, family_checkpoint):
    if checkpoint in checkpoints.FAMILIES:
        directory = family_checkpoint(checkpoint)
    else:
        directory = request.getfixturevalue(f"{checkpoint}_dir")
    reference_tokens, reference_logits = greedy(load_model(str(directory), device="cpu", dtype="float32"), prompt_ids)
    lm = load_model(str(directory), device="cpu", dtype="float32", quantization=mode)
    assert lm.quantization == mode
    assert isinstance(lm.model.lm_head, Int8Linear if mode == "int8" else Int4Linear)
    tokens, logits = greedy(lm, prompt_ids, follow=reference_tokens)
    agree = sum(a == b for a, b in zip(tokens, reference_tokens))
    error = max((a - b).abs().max() / b.std() for a, b in zip(logits, reference_logits))
    # Measured on these tiny untrained models: int8 15-16 of 16 and error
    # <= 0.09 std; int4 8-13 of 16 and error <= 1.07 std. A wrong layout or
    # scale gives errors of several std and chance agreement.
    if mode == "int8":
        assert agree >= NEW_TOKENS - 4, (tokens, reference_tokens)
        assert error < 0.2, error
    else:
        assert agree >= NEW_TOKENS // 3, (tokens, reference_tokens)
        assert error < 1.4, error


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_16_bit_quantized_model_runs_from_the_cache_as_at_its_first_load(codegen_dir, codegen_bin_dir, prompt_ids, dtype, caplog):
    """A model computing in 16 bits keeps its embedding a plain one of that dtype when read back from the
    disk cache (a NarrowEmbedding widens rows to float32, which a bfloat16 LayerNorm refuses)."""
    for directory in (codegen_dir, codegen_bin_dir):  # a float32 and a float16 checkpoint
        first = load_model(str(directory), device="cpu", dtype=dtype, quantization="int8")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="engine.build"):
            cached = load_model(str(directory), device="cpu", dtype=dtype, quantization="int8")
        assert "quantized weights read from" in caplog.text
        tokens, logits = greedy(first, prompt_ids, 4)
        assert len(tokens) == 4 and all(torch.isfinite(x).all() for x in logits)
        assert not isinstance(cached.model.embedding, NarrowEmbedding) and cached.model.embedding.weight.dtype == getattr(torch, dtype)
        cached_tokens, cached_logits = greedy(cached, prompt_ids, 4)
        assert cached_tokens == tokens
        assert all(torch.equal(a, b) for a, b in zip(cached_logits, logits))


def test_lm_head_switch(bigcode_mq_dir):
    lm = load_model(str(bigcode_mq_dir), device="cpu", quantization="int8", quantize_lm_head=False)
    assert isinstance(lm.model.transformer.h[0].attn.c_attn, Int8Linear)
    assert lm.model.lm_head.weight is lm.model.transformer.wte.weight  # still tied, still float
    cached = load_model(str(bigcode_mq_dir), device="cpu", quantization="int8", quantize_lm_head=False)
    assert cached.model.lm_head.weight is cached.model.transformer.wte.weight


def test_disk_cache_is_hit_on_second_load(codegen_dir, prompt_ids, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="engine.build"):
        first = load_model(str(codegen_dir), device="cpu", quantization="int4")
        assert any("quantized weights cached" in r.message for r in caplog.records)
        caplog.clear()
        second = load_model(str(codegen_dir), device="cpu", quantization="int4")
        assert any("quantized weights read from" in r.message for r in caplog.records)
    assert len(list((tmp_path / "cache" / "quantized").glob("*.safetensors"))) == 1
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert greedy(first, prompt_ids, 4)[0] == greedy(second, prompt_ids, 4)[0]


def test_other_settings_get_their_own_cache_entry(codegen_dir, tmp_path):
    load_model(str(codegen_dir), device="cpu", quantization="int8")
    load_model(str(codegen_dir), device="cpu", quantization="int8", dtype="bfloat16")
    load_model(str(codegen_dir), device="cpu", quantization="int8", quantize_lm_head=False)
    assert len(list((tmp_path / "cache" / "quantized").glob("*.safetensors"))) == 3


def test_cache_files_no_load_can_use_are_removed_at_the_next_write(codegen_dir, tmp_path):
    """The folder does not grow at every checkpoint update: after a write, the files of a changed or
    deleted checkpoint and of an older format are gone; the others, a newer format's included, stay."""
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path / "cache" / "quantized"
    changing, going = tmp_path / "changing", tmp_path / "going"
    shutil.copytree(codegen_dir, changing)
    shutil.copytree(codegen_dir, going)
    for directory in (changing, going, codegen_dir):
        load_model(str(directory), device="cpu", quantization="int8")
    load_model(str(codegen_dir), device="cpu", quantization="int4")
    (old_format, newer_format) = (folder / "old-int8-0.safetensors", folder / "newer-int8-0.safetensors")
    save_file({"x": torch.zeros(1)}, str(old_format), metadata={"codegen_lsp_format": "3"})
    save_file({"x": torch.zeros(1)}, str(newer_format), metadata={"codegen_lsp_format": "999"})
    before = {p.name for p in folder.glob("*.safetensors")}
    assert len(before) == 6
    shutil.rmtree(going)
    config = json.loads((changing / "config.json").read_text())
    (changing / "config.json").write_text(json.dumps(config, indent=1))  # an update: another size and time
    load_model(str(changing), device="cpu", quantization="int8")  # quantized again, then the folder is cleaned
    after = {p.name for p in folder.glob("*.safetensors")}
    gone = before - after
    assert len(gone) == 3 and old_format.name in gone and newer_format.name in after
    assert sorted(name.split("-")[0] for name in gone - {old_format.name}) == ["changing", "going"]
    assert sorted(name.split("-")[0] for name in after - before) == ["changing"]
    assert sum(name.startswith(codegen_dir.name) for name in after) == 2  # int8 and int4 of the unchanged one
    load_model(str(codegen_dir), device="cpu", quantization="int4")  # still a hit
    assert {p.name for p in folder.glob("*.safetensors")} == after


def test_corrupt_cache_file_is_replaced(codegen_dir, prompt_ids, tmp_path):
    good = greedy(load_model(str(codegen_dir), device="cpu", quantization="int8"), prompt_ids, 4)[0]
    (path,) = (tmp_path / "cache" / "quantized").glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    assert greedy(load_model(str(codegen_dir), device="cpu", quantization="int8"), prompt_ids, 4)[0] == good


def test_bad_settings_give_clear_errors(codegen_dir):
    with pytest.raises(EngineError, match="unknown quantization 'int3'"):
        load_model(str(codegen_dir), device="cpu", quantization="int3")
    with pytest.raises(EngineError, match="unknown compile setting"):
        load_model(str(codegen_dir), device="cpu", compile="always")


def test_weights_read_per_token_shrink_with_quantization(codegen_dir):
    size = {mode: weight_bytes_per_token(load_model(str(codegen_dir), device="cpu", quantization=mode).model)
            for mode in ("none", "int8", "int4")}
    # float32 -> 1 byte (int8) -> half a byte plus scales (int4); biases and norms stay float.
    assert size["int8"] < size["none"] / 3
    assert size["int4"] < size["int8"] * 0.75


def test_bench_command_prints_its_figures(codegen_dir, capsys):
    from lsp_server.cli import main

    argv = ["bench", "--model", str(codegen_dir), "--device", "cpu", "--quantization", "int8",
            "--prompt-tokens", "16", "--new-tokens", "4", "--repeat", "1", "--json"]
    assert main(argv) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["prompt_tokens"] == 16 and figures["new_tokens"] == 4
    assert figures["prefill_tokens_per_second"] > 0 and figures["decode_ms_per_token"] > 0
    assert figures["peak_memory_mb"] > 0 and figures["achieved_gb_per_second"] is None  # CPU: no roofline


def test_compile_auto_is_off_on_cpu(codegen_dir):
    assert load_model(str(codegen_dir), device="cpu", compile="auto").decode_step is None


# CodeGen's in the default suite; the other families' in `make test-compiled` (~15-30 s each to compile).
@pytest.mark.parametrize("checkpoint, mode", [("codegen", "int8"), ("codegen", "none"),
                                              *(pytest.param(family, "int8", marks=pytest.mark.compiled) for family in ("starcoder2", "deepseek", "qwen2"))])  # fmt: skip
def test_compiled_cpu_decode_equals_eager(checkpoint, mode, codegen_dir, family_checkpoint, stdlib_code, tmp_path, monkeypatch):
    """Each architecture's tiny model compiled on the CPU (~5-20 s cold on 2 cores), int8 and (with
    our float32 kernel's op in the graph) float32; StarCoder2's sliding window (48) is shorter
    than the prompt, so its step masks it. The step attends over the exact length: the cache
    grows as in eager decoding, and another length or session does not compile again."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    directory = codegen_dir if checkpoint == "codegen" else family_checkpoint(checkpoint)
    eager = load_model(str(directory), device="cpu", quantization=mode, compile="false")
    compiled = load_model(str(directory), device="cpu", quantization=mode, compile="true")
    assert compiled.decode_step is not None
    prompt_ids = eager.tokenizer.encode(stdlib_code)[:60]
    eager_tokens, eager_logits = greedy(eager, prompt_ids, 8)
    compiled_tokens, compiled_logits = greedy(compiled, prompt_ids, 8)
    assert compiled_tokens == eager_tokens
    for a, b in zip(compiled_logits, eager_logits):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    session = Session(compiled)
    session.prefill(prompt_ids[:30])
    for token in prompt_ids[30:36]:
        session.step(token)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert session.cache.capacity < compiled.config.n_positions


@needs_cuda
@pytest.mark.parametrize("mode", ["none", "int8", "int4"])
def test_cuda_compiled_decode_tracks_eager(codegen_dir, prompt_ids, mode):
    eager = load_model(str(codegen_dir), device="cuda", dtype="bfloat16", quantization=mode, compile="false")
    compiled = load_model(str(codegen_dir), device="cuda", dtype="bfloat16", quantization=mode, compile="true")
    eager_tokens, _ = greedy(eager, prompt_ids, 8)
    compiled_tokens, _ = greedy(compiled, prompt_ids, 8)
    assert sum(a == b for a, b in zip(eager_tokens, compiled_tokens)) >= 6


@needs_cuda
def test_cuda_int4_uses_the_tensor_core_kernel_when_shapes_allow():
    model = torch.nn.Sequential(torch.nn.Linear(256, 128)).to(torch.bfloat16)
    quantize_model(model, QuantSettings("int4", group_size=64))
    module = model.cuda()[0]
    module.prepare()
    assert module.kernel == "cuda"
    x = torch.randn(1, 256, device="cuda", dtype=torch.bfloat16)
    expected = torch.nn.functional.linear(x.float(), dequantize_int4(module.weight, module.scales_and_zeros, 64)) + module.bias.float()
    torch.testing.assert_close(module(x).float(), expected, atol=5e-2, rtol=5e-2)
