"""torchvision weights as ImageNet baselines: the sha256 prefix in the file name is verified."""
import hashlib

import pytest
import torch

from manidp.checkpoint import model_from_checkpoint
from manidp.errors import ManidpError
from manidp.models import build_model
from manidp.pretrained import (TORCHVISION_FILES, find_weights, hash_prefix_in_name, import_weights,
                               verify_sha256_prefix)


def _named_by_hash(folder, stem: str, payload: bytes, wrong: bool = False):
    digest = hashlib.sha256(payload).hexdigest()
    prefix = digest[:8] if not wrong else ("0" * 8 if not digest.startswith("0" * 8) else "1" * 8)
    path = folder / f"{stem}-{prefix}.pth"
    path.write_bytes(payload)
    return path, digest


def test_prefix_in_torchvision_names():
    assert hash_prefix_in_name(TORCHVISION_FILES["resnet18"]) == "f37072fd"
    assert hash_prefix_in_name(TORCHVISION_FILES["resnet34"]) == "b627a593"
    assert hash_prefix_in_name("weights.pth") is None


def test_right_prefix_passes(tmp_path):
    path, digest = _named_by_hash(tmp_path, "resnet18", b"not really weights, but hashed all the same")
    assert verify_sha256_prefix(path) == digest


def test_wrong_prefix_fails_with_one_line(tmp_path):
    path, digest = _named_by_hash(tmp_path, "resnet18", b"some bytes", wrong=True)
    with pytest.raises(ManidpError, match=rf"sha256 starts with {digest[:8]}, expected") as e:
        verify_sha256_prefix(path)
    assert "\n" not in str(e.value)


def test_truncated_file_fails(tmp_path):
    path, _ = _named_by_hash(tmp_path, "resnet34", b"x" * 1000)
    path.write_bytes(b"x" * 500)  # same name, truncated content
    with pytest.raises(ManidpError, match="truncated, corrupt"):
        verify_sha256_prefix(path)


def test_name_without_prefix_needs_an_expected_value(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"abc")
    with pytest.raises(ManidpError, match="carries no sha256 prefix"):
        verify_sha256_prefix(path)
    assert verify_sha256_prefix(path, hashlib.sha256(b"abc").hexdigest()[:8])


def test_configured_file_without_prefix_is_checked_against_torchvision(tmp_path):
    path = tmp_path / "my-resnet18.pth"   # no hex after the dash: torchvision's prefix applies
    path.write_bytes(b"not torchvision's file")
    with pytest.raises(ManidpError, match="expected f37072fd"):
        find_weights("resnet18", weights=path)


def test_missing_files_name_the_setting(tmp_path):
    with pytest.raises(ManidpError, match=r"imagenet_baseline\.weights\.resnet18: .* does not exist"):
        find_weights("resnet18", weights=tmp_path / "nope.pth", key="imagenet_baseline.weights.resnet18")
    with pytest.raises(ManidpError, match=r"resnet34-b627a593\.pth does not exist.*imagenet_baseline.*"
                                          r"train the ImageNet baselines instead \(imagenet_baseline\.source: train\)"):
        find_weights("resnet34", hub_dir=tmp_path, key="imagenet_baseline.weights.resnet34")
    with pytest.raises(ManidpError, match="no ImageNet weights for 'resnet20'"):
        find_weights("resnet20", hub_dir=tmp_path)


def test_import_gives_a_manidp_checkpoint(tmp_path):
    state = build_model("resnet18", num_classes=1000, gated=False).state_dict()
    blob = tmp_path / "blob.pth"
    torch.save(state, blob)
    path, digest = _named_by_hash(tmp_path, "resnet18", blob.read_bytes())
    found, sha = find_weights("resnet18", weights=path)
    assert found == path and sha == digest
    out = import_weights("resnet18", found, tmp_path / "ckpt" / "checkpoint.pt", sha256=sha)
    model, ckpt = model_from_checkpoint(out)
    assert (model.arch, model.gated, model.num_classes, model.input_size) == ("resnet18", False, 1000, 224)
    assert ckpt["config"]["source"] == "torchvision" and ckpt["config"]["sha256"] == digest
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])
