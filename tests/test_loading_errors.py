"""Every loading failure gives one clear line, from the library and from the command line."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from engine.errors import EngineError
from engine.loading import load_model
from engine.checkpoint import resolve_model_dir


def copy_checkpoint(src, tmp_path, name="ckpt"):
    return shutil.copytree(src, tmp_path / name)


def test_path_not_found(tmp_path):
    with pytest.raises(EngineError, match="model path not found: .*missing"):
        load_model(str(tmp_path / "missing"))


def test_hub_id_not_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(EngineError, match="'Salesforce/codegen-350M-mono' is not in the local Hugging Face cache"):
        load_model("Salesforce/codegen-350M-mono")


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hub_id_resolved_in_the_offline_cache(codegen_dir, tmp_path, monkeypatch, variable):
    hub = tmp_path / "hub"
    repo = hub / "models--Salesforce--codegen-tiny"
    shutil.copytree(codegen_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(hub if variable == "HF_HUB_CACHE" else tmp_path))
    assert resolve_model_dir("Salesforce/codegen-tiny") == repo / "snapshots" / "0123abcd"
    lm = load_model("Salesforce/codegen-tiny", device="cpu")
    assert lm.config.model_type == "codegen"
    with pytest.raises(EngineError, match="not in the local Hugging Face cache"):
        resolve_model_dir("Salesforce/codegen-tiny@other-branch")


def test_unsupported_model_type(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(config, model_type="mamba")))
    with pytest.raises(EngineError, match=r"unsupported model_type .mamba. \(supported: codegen, gpt_bigcode, llama, qwen2, starcoder2\)"):
        load_model(str(ckpt))


def test_truncated_safetensors(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(EngineError, match="corrupt or truncated safetensors file .*model.safetensors"):
        load_model(str(ckpt))


def test_garbage_bin(codegen_bin_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_bin_dir, tmp_path)
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04not a checkpoint at all")
    with pytest.raises(EngineError, match="corrupt or unsafe weights file"):
        load_model(str(ckpt))


def test_missing_tensor(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    state = load_file(ckpt / "model.safetensors")
    del state["transformer.h.1.mlp.fc_in.weight"]
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(EngineError, match="missing tensors: transformer.h.1.mlp.fc_in.weight"):
        load_model(str(ckpt))


def test_wrong_shape_names_the_tensor(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(config, n_embd=128)))
    with pytest.raises(EngineError, match=r"tensor transformer.wte.weight has shape \(50400, 64\)"):
        load_model(str(ckpt))


def test_missing_tokenizer(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(EngineError, match="no tokenizer in .*: expected tokenizer.json"):
        load_model(str(ckpt))


def test_missing_weights(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(EngineError, match="no weights in"):
        load_model(str(ckpt))


def test_sharded_safetensors(codegen_dir, tmp_path):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    state = load_file(ckpt / "model.safetensors")
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: state[k] for k in keys}, ckpt / shard)
    (ckpt / "model.safetensors").unlink()
    index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = load_model(str(ckpt), device="cpu")
    whole = load_model(str(codegen_dir), device="cpu")
    for (name, a), b in zip(sharded.model.state_dict().items(), whole.model.state_dict().values()):
        assert a.equal(b), name


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "lsp_server", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_errors_are_one_line_without_traceback(tmp_path, codegen_dir):
    ckpt = copy_checkpoint(codegen_dir, tmp_path)
    (ckpt / "tokenizer.json").unlink()
    for spec, message in [
        (str(tmp_path / "nope"), "model path not found"),
        ("Org/not-cached", "not in the local Hugging Face cache"),
        (str(ckpt), "no tokenizer in"),
    ]:
        result = run_cli("generate", "--model", spec, "--prompt", "x", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("codegen-lsp: error: ") and message in result.stderr


def test_cli_generate_json(codegen_bin_dir):
    from engine.generate import SamplingParams, generate
    from engine.session import Session

    result = run_cli("generate", "--model", str(codegen_bin_dir), "--prompt", "def add(a, b):",
                     "--max-new-tokens", "6", "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    lm = load_model(str(codegen_bin_dir), device="cpu")
    expected = generate(Session(lm), lm.tokenizer.encode("def add(a, b):"), SamplingParams(max_new_tokens=6))
    assert out["token_ids"] == expected.token_ids and out["text"] == expected.text
    assert out["stats"]["prompt_tokens"] == len(lm.tokenizer.encode("def add(a, b):"))
    assert set(out["stats"]) >= {"generated_tokens", "time_to_first_token_ms", "total_ms"}
