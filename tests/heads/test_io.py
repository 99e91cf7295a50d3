"""Head files: a save/load round trip, and one-sentence errors for a missing file, a file that
is not a head, and a head trained for another target."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from alignspec.errors import AlignspecError
from alignspec.heads.config import HeadConfig
from alignspec.heads.io import load_head, read_config, save_head, shipped_head_path
from alignspec.heads.modules import FeatureHead
from tests.conftest import make_tiny_llama


@pytest.fixture(scope="module")
def head() -> FeatureHead:
    torch.manual_seed(0)
    h = FeatureHead(HeadConfig.for_target(make_tiny_llama().config, "fspad"))
    h.set_draft_vocab(torch.tensor([3, 9, 27]))
    return h.eval()


def test_round_trip_in_bf16(head, tmp_path):
    path = save_head(head, tmp_path / "h.safetensors", {"note": "test"})
    cfg, meta = read_config(path)
    assert cfg == head.cfg and meta["note"] == "test"
    loaded = load_head(path, hidden_size=64, vocab_size=96)
    assert loaded.draft_ids.tolist() == [3, 9, 27]
    e, f = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    with torch.no_grad():
        a = head(e, f, torch.arange(5))[0]
        b = loaded(e, f, torch.arange(5))[0]
    torch.testing.assert_close(a, b, atol=0.1, rtol=0.05)  # weights stored in bf16
    for name, value in head.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value.bfloat16().float(), loaded.state_dict()[name])


def test_mismatched_target_is_refused(head, tmp_path):
    path = save_head(head, tmp_path / "h.safetensors")
    with pytest.raises(AlignspecError, match="hidden size 64"):
        load_head(path, hidden_size=576, vocab_size=96)
    with pytest.raises(AlignspecError, match="96-token vocabulary"):
        load_head(path, hidden_size=64, vocab_size=49152)


def test_missing_or_foreign_files_are_refused(tmp_path):
    with pytest.raises(AlignspecError, match="no draft head file"):
        load_head(tmp_path / "nope.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(AlignspecError, match="not an alignspec draft head"):
        load_head(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(AlignspecError, match="not a safetensors file"):
        load_head(junk)


def test_shipped_paths_live_in_the_package():
    assert shipped_head_path("fspad").name == "fspad-smollm2-135m.safetensors"
    assert shipped_head_path("eagle2").parent.name == "weights"
