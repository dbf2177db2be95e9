"""Weights and KV caches in mappings of their own, advised for huge pages (engine/huge_pages.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from engine import huge_pages
from engine.loading import load_model
from engine.session import Session

pytestmark = pytest.mark.skipif(not huge_pages.supported(), reason="huge pages are advised on Linux only")
# A kernel built without transparent huge pages refuses the advice (the mapping is fresh memory all the same).
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()


def mapping_flags(address: int) -> list[str]:
    """The VmFlags of this process's mapping that holds address (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                begin, end = (int(part, 16) for part in fields[0].split("-"))
                inside = begin <= address < end
            elif inside and fields[0] == "VmFlags:":
                return fields[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(4096, 256)  # 4 MB, read a row at a time
        self.table = nn.Embedding(4096, 256)  # another table no linear layer holds
        self.up = nn.Linear(256, 2048)  # 2 MB; its 8 KB bias stays where it is
        self.down = nn.Linear(2048, 256)
        self.head = nn.Linear(256, 4096, bias=False)
        self.head.weight = self.embedding.weight  # tied
        self.down.register_buffer("packed", torch.randn(1024, 1024))  # 4 MB, shared by two modules
        self.up.register_buffer("packed", self.down.packed)

    def forward(self, ids):
        h = self.down(torch.relu(self.up(self.embedding(ids) + self.table(ids))))
        return self.head(h) + self.down.packed[0, 0]


def test_weights_move_with_their_values_identities_and_ties():
    torch.manual_seed(0)
    model = Tied().eval()
    ids = torch.arange(0, 4096, 97)
    before = model(ids)
    parameters = {name: p for name, p in model.named_parameters()}
    old_table = model.table.weight.data_ptr()
    moved = huge_pages.move_weights(model)
    assert moved == sum(t.nbytes for t in (model.embedding.weight, model.up.weight, model.down.weight, model.down.packed))
    assert torch.equal(model(ids), before)
    assert {name: p for name, p in model.named_parameters()} == parameters  # the same Parameter objects
    assert model.head.weight is model.embedding.weight
    assert model.up.packed is model.down.packed
    assert model.table.weight.data_ptr() == old_table  # an embedding table alone stays
    addresses = [t.data_ptr() for t in (model.embedding.weight, model.up.weight, model.down.weight, model.down.packed)]
    assert min(addresses) % huge_pages.HUGE_PAGE == 0 and all(a % huge_pages.ALIGNMENT == 0 for a in addresses)
    assert ("hg" in mapping_flags(addresses[0])) == THP  # MADV_HUGEPAGE: the kernel gives 2 MB pages where it has them
    assert model.up.bias.nbytes < huge_pages.MIN_BYTES and model.up.bias.data_ptr() not in range(min(addresses), max(addresses))


def test_a_model_whose_weights_fill_no_huge_page_is_left_alone():
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    addresses = [p.data_ptr() for p in model.parameters()]
    assert huge_pages.move_weights(model) == 0
    assert [p.data_ptr() for p in model.parameters()] == addresses


def test_without_a_mapping_the_weights_and_caches_stay_with_pytorch(monkeypatch, caplog):
    def no_memory(nbytes):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(huge_pages, "huge_page_bytes", no_memory)
    model = Tied()
    addresses = [p.data_ptr() for p in model.parameters()]
    assert huge_pages.move_weights(model) == 0
    assert [p.data_ptr() for p in model.parameters()] == addresses
    assert "weights left where loading put them" in caplog.text
    cache = huge_pages.zeros((4, 1024, 1024), torch.float16)
    assert "hg" not in mapping_flags(cache.data_ptr()) and not cache.any()


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_a_loaded_model_decodes_the_same_from_its_moved_weights(bigcode_mq_dir, quantization, monkeypatch):
    """Logits of a prefill and of decode steps, bit for bit, with the weights moved and the KV cache in
    huge pages, and where loading left them with a cache from PyTorch's allocator."""
    monkeypatch.setattr(huge_pages, "HUGE_PAGE", 4096)  # this model's small cache in a mapping too
    logits = {}
    for move in (True, False):
        monkeypatch.setattr(huge_pages, "supported", lambda move=move: move)
        lm = load_model(str(bigcode_mq_dir), device="cpu", quantization=quantization)
        head = lm.model.lm_head
        weight = head._buffers["packed"] if quantization == "int8" else head.weight
        session = Session(lm)
        rows = [session.prefill(list(range(5, 60)))[0]] + [session.step(token) for token in (7, 8, 9)]
        logits[move] = torch.stack(rows)
        assert ("hg" in mapping_flags(weight.data_ptr())) == (move and THP)
        assert ("hg" in mapping_flags(session.cache.k.data_ptr())) == (move and THP)
    assert torch.equal(logits[True], logits[False])
