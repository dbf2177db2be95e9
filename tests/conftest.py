import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import checkpoints  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels_built_once():
    """Build (or load) our CPU kernels in the user's cache before tests point the cache at temporary
    folders: a process loads them once, so the build (~30 s) happens once per machine, not per run."""
    from engine import cpu_kernels
    from engine.paths import cache_dir

    cpu_kernels.load_kernels(cache_dir() / "kernels")


@pytest.fixture(autouse=True)
def unwritten_cache_positions_are_nan(monkeypatch):
    """A session's cache is allocated without zeroing (engine/kv_cache.py): what it holds before a
    position is written is whatever the memory held. Here that is NaN, which any read of such a
    position carries into the logits, so every test of this process checks that none is read."""
    from engine.kv_cache import KVCache

    allocate = KVCache.__init__

    def poisoned(self, *args, zeroed: bool = True, **kwargs):  # the class stays (a compiled step guards on it)
        allocate(self, *args, zeroed=zeroed, **kwargs)
        if not zeroed:
            self.k.fill_(float("nan"))
            self.v.fill_(float("nan"))

    monkeypatch.setattr(KVCache, "__init__", poisoned)


@pytest.fixture(scope="session")
def codegen_dir(tmp_path_factory):
    return checkpoints.make_codegen(tmp_path_factory.mktemp("codegen"))


@pytest.fixture(scope="session")
def codegen_bin_dir(tmp_path_factory):
    return checkpoints.make_codegen(tmp_path_factory.mktemp("codegen_bin"), legacy_bin=True, seed=1)


@pytest.fixture(scope="session")
def bigcode_mq_dir(tmp_path_factory):
    return checkpoints.make_bigcode(tmp_path_factory.mktemp("bigcode_mq"), multi_query=True)


@pytest.fixture(scope="session")
def bigcode_mh_dir(tmp_path_factory):
    return checkpoints.make_bigcode(
        tmp_path_factory.mktemp("bigcode_mh"), multi_query=False, fim_tokens=checkpoints.SANTACODER_FIM, seed=2
    )


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory):
    """family name -> its checkpoint (checkpoints.FAMILIES), each made once per session."""
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = checkpoints.make_family(tmp_path_factory.mktemp(family), family)
        return made[family]

    return get


@pytest.fixture(scope="session", params=["codegen", "codegen_bin", "bigcode_mq", "bigcode_mh", *checkpoints.FAMILIES])
def any_checkpoint(request, family_checkpoint):
    if request.param in checkpoints.FAMILIES:
        return family_checkpoint(request.param)
    return request.getfixturevalue(f"{request.param}_dir")


@pytest.fixture(scope="session")
def stdlib_code() -> str:
    """A few hundred tokens of real, indented code from the standard library."""
    import textwrap

    return textwrap.dedent(Path(textwrap.__file__).read_text(encoding="utf-8"))[2000:4000]
