"""manidp.dense_engines: the dense model in ONNX Runtime / OpenVINO (optional), checked against PyTorch;
missing engines are reported and skipped. Speed is measured by benchmarks/bench_accel.py only."""
import pytest
import torch

from manidp import dense_engines, latency
from manidp.models import build_model

INSTALLED = [e for e, v in dense_engines.versions().items() if v]


def dense_resnet20():
    torch.manual_seed(0)
    return build_model("resnet20").eval()


def test_missing_engines_are_reported_and_skipped(monkeypatch):
    monkeypatch.setattr(dense_engines, "versions", lambda: {e: None for e in dense_engines.ENGINES})
    runners, missing = dense_engines.build(dense_resnet20(), torch.randn(1, 3, 32, 32))
    assert runners == {}
    assert set(missing) == set(dense_engines.ENGINES)
    assert all("pip install -e .[bench]" in why for why in missing.values())
    variants, info = latency.dense_variants(dense_resnet20(), torch.randn(2, 3, 32, 32))
    assert set(variants) == {"dense", "dense-nhwc"} and info["max_abs_diff"] == {}


@pytest.mark.skipif(not INSTALLED, reason="neither onnxruntime nor openvino is installed (pip install -e .[bench])")
def test_engines_compute_the_pytorch_model():
    """Each installed engine's logits equal PyTorch's within float32 rounding, at batch 1 and 3
    (the export's batch dimension is dynamic)."""
    model, x = dense_resnet20(), torch.randn(3, 3, 32, 32)
    runners, missing = dense_engines.build(model, x, threads=1)
    assert set(runners) == set(INSTALLED), missing
    with torch.inference_mode():
        ref = model(x)
    for name, run in runners.items():
        assert dense_engines.max_abs_diff(run, model, x) < 1e-4 * float(ref.abs().max()), name
        assert torch.allclose(run(x), ref, rtol=0, atol=1e-4 * float(ref.abs().max())), name


def test_best_dense_is_the_fastest_present():
    assert latency.best_dense({"dense": 3.0, "dense-nhwc": 2.0, "masked": 0.5, "engine": 1.0}) == "dense-nhwc"
    assert latency.best_dense({"dense": 3.0, "dense-nhwc": 2.0, "onnxruntime": 1.5, "openvino": 1.7,
                               "engine": 1.0}) == "onnxruntime"
