"""The demo model shipped in engine/demo_model/: layout, size, tokenizer, and agreement with transformers."""

import json
from pathlib import Path

import pytest
import torch

import checkpoints
from engine.generate import SamplingParams, generate
from engine.loading import load_model
from engine.session import Session
from engine.kv_cache import KVCache
from engine.paths import DEMO_MODEL_DIR
from engine.tokenizer import load_tokenizer
from lsp_server.postprocess import parses

PROMPTS = [
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>",  # typed text, not FIM tokens
]
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md")


@pytest.fixture(scope="module")
def demo():
    return load_model(None, device="cpu", compile="false")  # no model configured = the shipped demo


def test_shipped_files_in_the_hugging_face_layout_under_20_mb():
    for name in HF_FILES:
        assert (DEMO_MODEL_DIR / name).is_file(), name
    size = sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir() if p.is_file())
    assert size <= 20 * 1024 * 1024, f"{size / 1e6:.1f} MB"
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "gpt_bigcode" and config["multi_query"] is True


def test_the_default_model_is_the_demo(demo):
    assert demo.path.resolve() == DEMO_MODEL_DIR.resolve()
    assert demo.config.model_type == "gpt_bigcode" and demo.config.n_kv_heads == 1
    assert demo.model.training is False


def test_tokenizer_has_starcoder_fim_tokens_and_eos():
    tok = load_tokenizer(DEMO_MODEL_DIR)
    assert tok.fim is not None
    assert (tok.fim.prefix, tok.fim.middle, tok.fim.suffix, tok.fim.pad) == tuple(
        tok.token_id(t) for t in ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>")
    )
    assert tok.eos_id == tok.token_id("<|endoftext|>") is not None
    assert {tok.eos_id, tok.fim.prefix, tok.fim.middle, tok.fim.suffix, tok.fim.pad} <= tok.special_ids
    assert 1000 < tok.vocab_size <= 8192


@pytest.mark.parametrize("text", [
    "\tif x:\r\n\t\treturn  'héllo wörld 😀'  \n\n\n",
    "    def f(self, *args, **kwargs):\n        return {k: v for k, v in kwargs.items()}\n",
    "x = 1;  y = '\\x00\\n'  # trailing spaces   \n" + " " * 17 + "pass",
    *PROMPTS,
])
def test_decode_encode_round_trip(text):
    tok = load_tokenizer(DEMO_MODEL_DIR)
    assert tok.decode(tok.encode(text)) == text
    if "<fim_" in text:  # typed FIM tokens stay text
        assert tok.fim.prefix not in tok.encode(text)


def test_round_trip_on_real_code(stdlib_code):
    tok = load_tokenizer(DEMO_MODEL_DIR)
    ids = tok.encode(stdlib_code)
    assert tok.decode(ids) == stdlib_code
    assert len(ids) < len(stdlib_code) / 2.5  # a code tokenizer, not bytes


def test_it_predicts_real_code(demo, stdlib_code):
    # A random-weight model of this vocabulary scores ~8.3 nats per token.
    ids = torch.tensor([demo.tokenizer.encode(stdlib_code)[: demo.config.n_positions]])
    with torch.inference_mode():
        logits = demo.model(ids[:, :-1], torch.arange(ids.shape[1] - 1), cache=None)[0]
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    assert loss < 6.5


def _hf_greedy(ref, ids: list[int], steps: int, stop_ids: list[int]) -> list[int]:
    """transformers' greedy tokens, up to the first special token (where our generate stops)."""
    out = ref.generate(
        torch.tensor([ids]), max_new_tokens=steps, do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0]
    )[0, len(ids):].tolist()
    stops = [i for i, t in enumerate(out) if t in stop_ids]
    return out[: stops[0]] if stops else out


def test_greedy_tokens_and_logits_equal_transformers(demo, stdlib_code):
    ref = checkpoints.hf_model(DEMO_MODEL_DIR)
    tok = demo.tokenizer
    new_tokens = 32  # the stdlib prompt leaves the window room for them
    prompts = [tok.encode(p) for p in PROMPTS] + [tok.encode(stdlib_code)[: demo.config.n_positions - new_tokens]]
    f = tok.fim
    prompts.append([f.prefix, *tok.encode("def add(a, b):\n    "), f.suffix, *tok.encode("\n\nprint(add(1, 2))\n"), f.middle])
    for ids in prompts:
        with torch.inference_mode():
            expected = ref(torch.tensor([ids])).logits
        actual, _ = Session(demo).prefill(ids)
        torch.testing.assert_close(actual, expected[0, -1], atol=1e-4, rtol=1e-4)
        result = generate(Session(demo), ids, SamplingParams(max_new_tokens=new_tokens))
        assert result.token_ids == _hf_greedy(ref, ids, new_tokens, sorted(tok.special_ids))


@pytest.mark.parametrize("fixture", ["codegen_dir", "bigcode_mq_dir", "bigcode_mh_dir"])
def test_training_path_equals_the_cached_path(fixture, request):
    # train.py runs the engine's modules with cache=None on a batch: it must be the same model.
    lm = load_model(str(request.getfixturevalue(fixture)), device="cpu", compile="false")
    ids = torch.randint(0, lm.tokenizer.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        batched = lm.model(ids, torch.arange(40), cache=None)
        for row in range(2):
            cache = KVCache(lm.config, 64, "cpu", torch.float32)
            one = lm.model(ids[row : row + 1], torch.arange(40), cache, kv_len=40)
            torch.testing.assert_close(batched[row], one[0], atol=1e-5, rtol=1e-5)


async def test_the_server_suggests_from_the_demo_model_when_no_model_is_set(tmp_path):
    # End to end: a project that names no model gets the shipped one, and the
    # suggestion is the one the same middle layer computes in this process.
    from test_server import Expected, ended_loads, inline, open_doc, start_server, stop_server, wait_for

    (tmp_path / ".codegen-lsp.toml").write_text('debounce_ms = 0\nmax_new_tokens = 16\n')
    source = "import sys\n\nif __name__ == \n"  # a line the demo model is sure of (engine/stops.py)
    want = Expected(DEMO_MODEL_DIR, debounce_ms=0, max_new_tokens=16)(source, 2, 15)
    assert want.strip()
    client = await start_server([tmp_path])
    try:
        await wait_for(lambda: ended_loads(client) >= 1, "the demo model to load")
        uri = (tmp_path / "demo.py").as_uri()
        open_doc(client, uri, source)
        items = await inline(client, uri, 2, 15)
        assert [i.insert_text for i in items] == [want]
    finally:
        await stop_server(client)


# Functions of held-out files (never trained on), cut at the cursor "|".
HELD_OUT_ENDS_OF_LINES = {  # the rest of the line to write
    "pdb.py": (
        "def _safe_repr(self, obj, expr):\n    try:\n        return repr(obj)\n    except Exception |\n"
        '        return _rstr(f"*** repr({expr}) failed: {self._format_exc(e)} ***")\n'
    ),
    "asyncore.py": (
        "def set_file(self, fd):\n    self.socket = file_wrapper(fd|\n    self._fileno = self.socket.fileno()\n"
        "    self.add_channel()\n"
    ),
    "lib2to3/pgen2/pgen.py": (
        "def addarc(self, next, label=None):\n    assert label is None or isinstance(label, str)\n"
        "    assert isinstance(next, NFAState)\n    self.arcs.append((label, |\n"
    ),
}
HELD_OUT_GAPS = {  # a whole line masked: FIM must write something that closes it
    "mimetypes.py": (
        "def read_mime_types(file):\n    try:\n        f = open(file, encoding='utf-8')\n    except OSError:\n        |\n"
        "    with f:\n        db = MimeTypes()\n        db.readfp(f, True)\n        return db.types_map[True]\n"
    ),
    "unittest/mock.py": (
        "def _to_stream(read_data):\n    if isinstance(read_data, bytes):\n        return io.BytesIO(read_data)\n"
        "    else:\n        |\n"
    ),
    "types.py": "def __iter__(self):\n    if self.__isgen:\n        |\n    return self\n",
}


async def test_the_server_completes_held_out_code_with_the_demo_model(tmp_path):
    from test_server import ended_loads, inline, open_doc, start_server, stop_server, wait_for

    # ramble_stop off: what the model writes to the end of the line, even where it is unsure
    # (the stop would show less of it: "label" for "label))").
    (tmp_path / ".codegen-lsp.toml").write_text('debounce_ms = 0\nramble_stop = "off"\n')
    client = await start_server([tmp_path])
    try:
        await wait_for(lambda: ended_loads(client) >= 1, "the demo model to load")
        for n, (name, snippet) in enumerate({**HELD_OUT_ENDS_OF_LINES, **HELD_OUT_GAPS}.items()):
            prefix, suffix = snippet.split("|")
            if name in HELD_OUT_GAPS:
                assert not parses(prefix + suffix), name  # writing nothing would not do
            uri = (tmp_path / f"held_out_{n}.py").as_uri()
            open_doc(client, uri, prefix + suffix)
            lines = prefix.split("\n")
            items = await inline(client, uri, len(lines) - 1, len(lines[-1]))
            assert len(items) == 1 and items[0].insert_text.strip(), name
            assert parses(prefix + items[0].insert_text + suffix), (name, items[0].insert_text)
    finally:
        await stop_server(client)


def test_make_demo_prints_a_suggestion_from_the_demo_model():
    # The command `make demo` runs (Makefile), with --json to read the stats too.
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    recipe = (root / "Makefile").read_text().split("\ndemo:", 1)[1]
    args = re.search(r"codegen-lsp complete (examples/\S+ --line \d+ --character \d+)\n", recipe).group(1).split()
    run = subprocess.run(
        [sys.executable, "-m", "lsp_server", "complete", *args, "--json"], capture_output=True, text=True, cwd=root, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["stats"]["model"] == "the demo model"
    source = (root / args[0]).read_text().split("\n")
    line, character = int(args[2]), int(args[4])
    source[line] = source[line][:character] + result["text"] + source[line][character:]
    assert result["text"].strip() and parses("\n".join(source))
