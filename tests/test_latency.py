"""manidp.latency: the engine checked against the masked model, and the rounding-tie diagnostic.
Speed is measured (by `manidp latency` and benchmarks/bench_accel.py), never asserted."""
import torch

from manidp import accel, dense_engines, latency
from manidp.models import build_model


def gated(x, remain=0.5):
    torch.manual_seed(0)
    model = accel.randomize_(build_model("resnet20", gated=True), x)
    return accel.calibrate_thresholds_(model, x, remain)


def test_measure_checks_every_image():
    x = torch.randn(6, 3, 32, 32)
    labels = torch.arange(6) % 10
    r = latency.measure(gated(x), x, labels, repeats=1)
    assert r["images"] == 6 and r["same_decisions"] == 6 and r["differing_decisions"] == 0
    assert r["same_prediction"] == 6 and r["executed_equals_analytic"] and r["max_rel_logit_error"] < 1e-4
    assert r["top1_engine"] == r["top1_masked"]
    installed = {e for e, v in dense_engines.versions().items() if v}
    assert set(r["latency_ms"]) == {"dense", "dense-nhwc", "masked", "engine"} | installed
    assert set(r["dense_engines"]["missing"]) == set(dense_engines.ENGINES) - installed
    assert set(r["dense_engines"]["max_abs_diff"]) == installed
    assert r["best_dense"] == min(latency.DENSE[:2] + tuple(installed), key=r["latency_ms"].get)
    assert r["speedup"] == r["latency_ms"][r["best_dense"]] / r["latency_ms"]["engine"]


def test_tie_margin_finds_a_saliency_at_its_threshold():
    x = torch.randn(4, 3, 32, 32)
    model = gated(x)
    with torch.no_grad():
        model(x)
    before = latency.tie_margin(model)
    assert (before > 0).all()
    # Put gate 0's threshold exactly on instance 2's saliency of channel 3. Gate 0 reads the stem,
    # which its threshold does not change, so the next pass reproduces that saliency bit for bit.
    gate = model.gates()[0]
    gate.threshold.fill_(float(gate.saliency[2, 3]))
    with torch.no_grad():
        model(x)
    margin = latency.tie_margin(model)
    assert margin[2] == 0 and (margin[[0, 1, 3]] > 0).all()


def test_benchmark_plot_from_saved_results(tmp_path):
    """bench_accel.py --plot/--replot draws one group of bars per model from its JSON."""
    from benchmarks import bench_accel
    lat = {k: {"median_ms": v} for k, v in
           {"dense": 10.0, "dense-nhwc": 8.0, "masked": 12.0, "engine-torch": 7.0, "engine": 4.0}.items()}
    data = {"env": {"threads": 2, "clock": "wall", "torch": torch.__version__},
            "results": [{"arch": "resnet20", "input_size": 32, "reduction_pct": 50.0, "batch1": lat,
                         "best_dense": "dense-nhwc", "theoretical_speedup": 2.0}]}
    path = tmp_path / "latency.png"
    bench_accel.plot(data, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
