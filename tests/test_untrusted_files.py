"""Nothing read from disk is trusted before it is checked: config sizes, file kinds,
shard names and the cache of quantized weights. Each case gives one clear
EngineError (or, for the cache, a silent re-quantization), never a hang, a
crash or an allocation of gigabytes."""

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import EngineError
from engine.generate import SamplingParams, generate
from engine.loading import load_model
from engine.session import Session
from engine.quantize import CACHE_FORMAT, TEMPORARY_SUFFIX, tensor_layout, _layout_digest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEN_LSP_CACHE", str(tmp_path / "cache"))


def copy_checkpoint(src, tmp_path, name="ckpt"):
    return shutil.copytree(src, tmp_path / name)


def edit_config(ckpt, **changes):
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    (ckpt / "config.json").write_text(json.dumps(config))


def load_in_thread(*args, **kwargs):
    """load_model in a thread, so a load that blocks fails the test instead of hanging it."""
    outcome = {}

    def run():
        try:
            outcome["model"] = load_model(*args, **kwargs)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)  # a guard against a hang, not a timing assertion
    assert not thread.is_alive(), "load_model blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["model"]


def greedy_ids(lm, n=6):
    return generate(Session(lm), lm.tokenizer.encode("def add(a, b):\n    return"), SamplingParams(max_new_tokens=n)).token_ids


# ---------------------------------------------------------------- config.json


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_layer": 100000}, r"n_layer = 100000 is out of range \(allowed 1 to 1024\)"),
        ({"n_layer": 100000, "n_embd": 1e6}, r"n_embd = 1000000 is out of range"),
        ({"n_layer": -2}, r"n_layer = -2 is out of range \(allowed 1 to 1024\)"),
        ({"n_positions": -1}, r"n_positions = -1 is out of range"),
        ({"n_head": 0}, r"n_head = 0 is out of range \(allowed 1 to 1024\)"),
        ({"n_head": 3}, r"n_embd 64 is not divisible by n_head 3"),
        ({"n_embd": 64.5}, r"n_embd must be a whole number from 1 to 65536, got 64.5"),
        ({"n_layer": "2"}, r"n_layer must be a whole number"),
        ({"n_positions": float("inf")}, r"n_positions must be a whole number from 1 to 1048576, got inf"),
        ({"n_layer": True}, r"n_layer must be a whole number"),
        ({"rotary_dim": 7}, r"rotary_dim 7 must be even and at most the head size 16"),
        ({"rotary_dim": 32}, r"rotary_dim 32 must be even and at most the head size 16"),
        ({"eos_token_id": 99999999}, r"eos_token_id must be a token id from 0 to 50399"),
        ({"layer_norm_epsilon": -1}, r"layer_norm_epsilon must be a number between 0 and 1"),
        ({"vocab_size": None}, r"vocab_size is missing"),
        # Every size in range, but together far more than any machine's memory.
        ({"n_layer": 1024, "n_embd": 65536, "n_head": 1024, "n_inner": 262144}, r"more than the .* GB of memory available"),
    ],
)
def test_config_sizes_are_bounded_before_anything_is_allocated(codegen_dir, tmp_path, changes, message):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    edit_config(ckpt, **changes)
    with pytest.raises(EngineError, match=message) as error:
        load_in_thread(str(ckpt), device="cpu")
    assert str(ckpt / "config.json") in str(error.value)  # the message names the file


def test_config_that_is_not_a_json_object(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    (ckpt / "config.json").write_text("[1, 2]")
    with pytest.raises(EngineError, match="config.json is not a JSON object"):
        load_model(str(ckpt), device="cpu")
    (ckpt / "config.json").write_text("[" * 100_000)
    with pytest.raises(EngineError, match="config.json is not valid JSON"):
        load_model(str(ckpt), device="cpu")


# ---------------------------------------------------------------- file kinds


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
def test_a_fifo_in_the_checkpoint_is_refused_not_waited_on(codegen_dir, tmp_path, name):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    (ckpt / name).unlink(missing_ok=True)
    os.mkfifo(ckpt / name)
    with pytest.raises(EngineError, match=f"{name} is not a regular file \\(a FIFO\\)"):
        load_in_thread(str(ckpt), device="cpu")


def test_symlink_loops_devices_and_unknown_home_folders(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").symlink_to("config.json")
    with pytest.raises(EngineError, match="cannot read .*config.json: .*Too many levels of symbolic links"):
        load_model(str(ckpt), device="cpu")
    (ckpt / "config.json").unlink()
    shutil.copy(codegen_dir / "config.json", ckpt / "config.json")
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(EngineError, match="model.safetensors is not a regular file \\(a character device\\)"):
        load_model(str(ckpt), device="cpu")
    with pytest.raises(EngineError, match="model path not found: ~no-such-user-here/model"):
        load_model("~no-such-user-here/model", device="cpu")


def test_a_directory_where_weights_should_be(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").mkdir()
    with pytest.raises(EngineError, match="model.safetensors is not a regular file \\(a directory\\)"):
        load_model(str(ckpt), device="cpu")


def test_an_oversized_metadata_file_is_not_read(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    with open(ckpt / "tokenizer_config.json", "wb") as f:
        f.truncate(17 * 2**20)  # sparse: no disk used
    with pytest.raises(EngineError, match="tokenizer_config.json is 17.0 MB, more than the 16.0 MB such a file can be"):
        load_model(str(ckpt), device="cpu")


def test_shard_names_cannot_leave_the_checkpoint(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.move(ckpt / "model.safetensors", outside)
    names = load_file(str(outside)).keys()
    index = {"weight_map": {name: "../outside.safetensors" for name in names}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EngineError, match="shard '../outside.safetensors' is not a file name in the checkpoint directory"):
        load_model(str(ckpt), device="cpu")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": [1, 2]}))
    with pytest.raises(EngineError, match="expected a weight_map"):
        load_model(str(ckpt), device="cpu")


def test_hub_ref_cannot_point_outside_the_snapshots(codegen_dir, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(codegen_dir, repo / "snapshots" / "abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("../../../../etc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(EngineError, match="not in the local Hugging Face cache"):
        load_model("org/tiny", device="cpu")


# ---------------------------------------------------------------- the quantized cache


def cache_file(tmp_path):
    (path,) = (tmp_path / "cache" / "quantized").glob("*.safetensors")
    return path


def rewrite_cache(path, change, digest=True):
    """Write the cache file back with change(state) applied; with digest, a header digest that matches
    what is written (as a buggy or older writer would), so only the check against the model catches it."""
    state = change(load_file(str(path)))
    metadata = {"format": "pt", "codegen_lsp_format": str(CACHE_FORMAT)}
    if digest:
        metadata["layout_sha256"] = _layout_digest(tensor_layout(state))
    save_file(state, str(path), metadata=metadata)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: {**s, "lm_head.weight": s["lm_head.weight"][:-16]}, id="wrong-shape"),
        pytest.param(lambda s: {**s, "lm_head.weight": s["lm_head.weight"].float()}, id="int8-stored-as-float32"),
        pytest.param(lambda s: {k: v for k, v in s.items() if k != "lm_head.scales"}, id="missing-tensor"),
        pytest.param(lambda s: {**s, "extra": torch.zeros(1)}, id="extra-tensor"),
    ],
)
def test_a_cache_file_that_does_not_fit_the_model_is_quantized_again_and_rewritten(codegen_dir, tmp_path, caplog, change):
    good = greedy_ids(load_model(str(codegen_dir), device="cpu", quantization="int8"))
    path = cache_file(tmp_path)
    rewrite_cache(path, change)
    with caplog.at_level("INFO", logger="engine"):
        again = load_model(str(codegen_dir), device="cpu", quantization="int8")
    assert any("does not match the model" in r.message for r in caplog.records)
    assert greedy_ids(again) == good
    caplog.clear()
    with caplog.at_level("INFO", logger="engine"):
        third = load_model(str(codegen_dir), device="cpu", quantization="int8")  # the rewritten file is good
    assert any("quantized weights read from" in r.message for r in caplog.records)
    assert greedy_ids(third) == good


def test_int4_zero_points_that_quantizing_does_not_make_are_quantized_again(codegen_dir, tmp_path, caplog):
    """The right layout with values our int4 layout cannot hold (a zero point between two steps, as a
    cache of format 4 had): refused when read, quantized again, and the suggestion is unchanged."""
    good = greedy_ids(load_model(str(codegen_dir), device="cpu", quantization="int4"))
    path = cache_file(tmp_path)

    def shift_a_zero(state):
        name = next(k for k in sorted(state) if k.endswith("scales_and_zeros"))
        sz = state[name].clone()
        sz[0, 0, 1] += sz[0, 0, 0] / 3
        return {**state, name: sz}

    rewrite_cache(path, shift_a_zero)
    with caplog.at_level("INFO", logger="engine"):
        again = load_model(str(codegen_dir), device="cpu", quantization="int4")
    assert any("int4 zero points that quantize_int4 does not make" in r.message for r in caplog.records)
    assert greedy_ids(again) == good


def test_a_cache_file_whose_header_digest_is_wrong_or_from_another_format(codegen_dir, tmp_path, caplog):
    load_model(str(codegen_dir), device="cpu", quantization="int4")
    path = cache_file(tmp_path)
    rewrite_cache(path, lambda s: s, digest=False)
    with caplog.at_level("INFO", logger="engine"):
        load_model(str(codegen_dir), device="cpu", quantization="int4")
    assert any("does not match the digest" in r.message for r in caplog.records)
    state = load_file(str(path))
    save_file(state, str(path), metadata={"format": "pt"})  # what format 1 wrote
    caplog.clear()
    with caplog.at_level("INFO", logger="engine"):
        load_model(str(codegen_dir), device="cpu", quantization="int4")
    assert any("format None, expected" in r.message for r in caplog.records)


def test_the_cache_written_matches_what_the_model_expects_in_every_dtype(bigcode_mq_dir, tmp_path, caplog):
    for dtype in ("float32", "bfloat16"):
        for lm_head in (True, False):
            load_model(str(bigcode_mq_dir), device="cpu", quantization="int8", dtype=dtype, quantize_lm_head=lm_head)
            caplog.clear()
            with caplog.at_level("INFO", logger="engine"):
                load_model(str(bigcode_mq_dir), device="cpu", quantization="int8", dtype=dtype, quantize_lm_head=lm_head)
            assert any("quantized weights read from" in r.message for r in caplog.records), (dtype, lm_head)


def mapped_files() -> set[str]:
    """The files this process has mapped into memory (Linux)."""
    with open("/proc/self/maps") as maps:
        fields = [line.split(maxsplit=5) for line in maps]
    return {f[5].strip() for f in fields if len(f) == 6}  # address, perms, offset, device, inode, path


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantized_model_keeps_no_map_of_the_files_it_was_read_from(codegen_dir, tmp_path, mode):
    """safetensors' tensors point into a map of their file: a model that kept its embedding there kept
    every page quantizing had read (santacoder in int8: 5.8 GB resident after its first load, 1.5 GB of
    tensors). Quantized from the checkpoint, then read from the cache."""
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    for source in ("checkpoint", "cache"):
        lm = load_model(str(ckpt), device="cpu", quantization=mode)
        read = [str(ckpt / "model.safetensors")] + ([str(cache_file(tmp_path))] if source == "cache" else [])
        assert not set(read) & mapped_files(), source
        assert greedy_ids(lm)  # the copies are the weights it runs with
        del lm


def test_half_written_cache_files_of_dead_writers_are_removed_at_start(codegen_dir, tmp_path):
    folder = tmp_path / "cache" / "quantized"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = folder / f"ckpt-int8-0123.safetensors.{dead_pid}{TEMPORARY_SUFFIX}"
    legacy = folder / f"ckpt-int8-4567.tmp{dead_pid}"  # the name format 1 used
    alive = folder / f"ckpt-int8-89ab.safetensors.{os.getpid()}{TEMPORARY_SUFFIX}"  # being written now
    for path in (stale, legacy, alive):
        path.write_bytes(b"\0" * 1000)
    load_model(str(codegen_dir), device="cpu", quantization="int8")
    assert not stale.exists() and not legacy.exists()
    assert alive.exists()
    assert len(list(folder.glob("*.safetensors"))) == 1  # the one just written, whole
    assert list(folder.glob(f"*.{os.getpid()}{TEMPORARY_SUFFIX}")) == [alive]


def test_an_unwritable_cache_still_loads(codegen_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CODEGEN_LSP_CACHE", str(blocker))
    lm = load_model(str(codegen_dir), device="cpu", quantization="int8")
    assert greedy_ids(lm)
