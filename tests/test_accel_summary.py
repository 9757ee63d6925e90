"""benchmarks/accel_summary.py: issue 13's cross-run table reads each bench_accel.py JSON's own
figures (no recomputation), counts the targets it meets, and refuses a file with a NaN speedup."""
import json

import pytest

from benchmarks import accel_summary


def _run(tmp_path, name, speedups, all_open=0.8, details=True):
    env = {"cpu_model": "Test CPU", "kernel_isa": "AVX2", "cpu_isa": "AVX2", "threads": 1,
           "clock": "cpu", "git_commit": "0123456789abcdef"}
    if details:
        env["cpu_details"] = {"cpu_family": "25", "model": "1"}
    results = [{"arch": a, "speedup": s, "best_dense": "onnxruntime", "all_open_vs_best_dense": all_open}
               for a, s in speedups.items()]
    path = tmp_path / name
    path.write_text(json.dumps({"env": env, "results": results}))
    return path


def test_row_counts_targets(tmp_path):
    # ResNet-34 1.80x meets >= 1.8x exactly; ResNet-18 1.79x does not; ResNet-56 1.5x meets >= 1.5x;
    # the CIFAR minimum is ResNet-20's 0.99x, below 1.0x.
    path = _run(tmp_path, "bench_accel_1thread.json",
                {"resnet34": 1.80, "resnet18": 1.79, "resnet56": 1.5, "resnet20": 0.99, "resnet110": 2.0})
    r = accel_summary.row(path)
    assert (r["met"], r["targets"]) == (2, 4)
    assert r["cifar_min"] == 0.99
    assert r["machine"] == "Test CPU, family 25 model 1"
    line = accel_summary.table([r]).splitlines()[2]
    assert "| 1.80x (ORT) | 1.79x (ORT) | 1.50x (ORT) | 0.99x (ORT) | - | 2.00x (ORT) | 0.99x |" in line
    assert line.endswith("| 0.80-0.80x | 2 of 4 |")


def test_old_runs_are_named_by_folder(tmp_path):
    folder = tmp_path / "zen3"
    folder.mkdir()
    r = accel_summary.row(_run(folder, "bench_accel_1thread.json", {"resnet56": 1.2}, details=False))
    assert r["machine"] == "Test CPU (zen3)"
    assert (r["met"], r["targets"]) == (1, 2)       # ResNet-56 >= 1.5x no; CIFAR min >= 1.0x yes


def test_nan_speedup_and_foreign_json_are_refused(tmp_path, capsys):
    bad = _run(tmp_path, "bench_accel_nan.json", {"resnet56": float("nan")})
    with pytest.raises(SystemExit, match="bench_accel_nan.json: no finite speedup for resnet56"):
        accel_summary.main([str(bad)])
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(SystemExit, match="other.json: not a bench_accel.py JSON"):
        accel_summary.main([str(other)])
    with pytest.raises(SystemExit, match="missing.json: no such file"):
        accel_summary.main([str(tmp_path / "missing.json")])


def test_out_is_written_whole(tmp_path, capsys):
    path = _run(tmp_path, "bench_accel_1thread.json", {"resnet34": 1.7})
    out = tmp_path / "summary.md"
    accel_summary.main([str(path), "--out", str(out)])
    assert out.read_text() == capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("doc", ["docs/acceleration.md", "results/accel/README.md"])
def test_docs_quote_the_current_table(doc):
    """The every-run table in the docs is what accel_summary.py prints for the kept JSONs: a JSON
    added to results/accel without regenerating the table fails here."""
    paths = sorted(accel_summary.RESULTS.rglob("bench_accel_*.json"))
    table = accel_summary.table([accel_summary.row(p) for p in paths])
    text = (accel_summary.ROOT / doc).read_text()
    start = text.index(table.splitlines()[0])
    end = text.find("\n\n", start)
    assert text[start:end if end >= 0 else len(text)].rstrip("\n") == table
