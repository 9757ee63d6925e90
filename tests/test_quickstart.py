"""The quickstart (config/quickstart.yaml, README "Quickstart"): the README's offline form, run on the
real CIFAR-10 subset with a smaller budget given by --config, and the download path's behaviour without
any network (torchvision's download is replaced by one that fails, as it does offline)."""
from __future__ import annotations

import json
import re
import time

import pandas as pd
import pytest

from datapaths import MINI
from manidp import data as data_mod
from manidp.errors import ManidpError
from test_pipeline import job_counts, make_workdir, snakemake

# The README's command, with the data path of the offline form and a test-sized budget on top.
BUDGET = ('baseline={"cifar10": {"epochs": 1, "limit_train": 1000}}',
          'manidp={"cifar10": {"epochs": 2, "limit_train": 1000, "calibration_instances": 512}}')


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    if not MINI.is_file():
        pytest.skip(f"{MINI} (the real CIFAR-10 subset) is not here")
    wd = make_workdir(tmp_path_factory.mktemp("quickstart"))
    start = time.time()
    r = snakemake(wd, "--cores", "2", "--configfile", "config/quickstart.yaml",
                  "--config", f'data={{"cifar10": {{"path": "{MINI}"}}}}', *BUDGET, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    print(f"quickstart on the subset (test budget): {time.time() - start:.0f} s")
    return {"dir": wd, "root": wd / "results" / "quickstart", "output": r.stdout + r.stderr}


@pytest.mark.slow
def test_quickstart_makes_the_table_row_comparison_and_plots(quickstart):
    root = quickstart["root"]
    counts = job_counts(quickstart["output"])
    assert counts["train_baseline"] == 1 and counts["prune"] == 1 and counts["measure"] == 2, counts
    ev = json.loads((root / "cifar10" / "resnet20" / "manidp-paper" / "seed0" / "eval.json").read_text())
    assert ev["target_reduction_pct"] == pytest.approx(54.2) and ev["on_target"]   # the paper's ResNet-20 point
    assert ev["instances"] == 1000 and "subset" in ev["data_source"]              # all test rows, no download
    md = (root / "paper_tables" / "cifar10.md").read_text()
    tex = (root / "paper_tables" / "cifar10.tex").read_text()
    row = next(line for line in md.splitlines() if "**ManiDP (ours, regenerated) †** (n=1)" in line)
    assert f"| {100 - ev['top1']:.2f} |" in row and f"| {ev['macs']['reduction_pct']:.1f} |" in row, row
    for text in (md, tex):                             # labelled: a short budget, never a reproduction
        assert "quickstart, short CPU budget" in text and "SMOKE RUN" in text
    comparison = pd.read_csv(root / "cifar10" / "comparison.csv")
    ours = comparison[(comparison["kind"] == "regenerated") & (comparison["variant"] == "manidp-paper")]
    assert set(ours["status"]) == {"not comparable"}
    assert ours.set_index("metric").loc["top1_err", "ours_mean"] == pytest.approx(100 - ev["top1"], abs=1e-9)
    assert (root / "cifar10" / "plots" / "top1_vs_macs.png").stat().st_size > 1000
    assert not (quickstart["dir"] / "resources").exists()          # nothing was downloaded


@pytest.mark.slow
def test_quickstart_train_log_has_time_rate_and_eta(quickstart):
    log = (quickstart["root"] / "cifar10" / "resnet20" / "manidp-paper" / "seed0" / "train.log").read_text()
    epochs = [line for line in log.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(re.search(r"\| [\d.]+ s \([\d,]+ img/s\) \| elapsed \d\d:\d\d, ETA \d\d:\d\d$",
                                              line) for line in epochs), log
    assert re.search(r"^manidp epoch 2/2: 100% \(1,000/1,000 img\)", log, re.M), log


def test_download_only_where_no_copy_is(monkeypatch, tmp_path):
    """Offline, torchvision's download fails: the error names the archive, its md5 and where to put it.
    A copy that is there (the subset archive) is loaded and the download is never called."""
    from torchvision.datasets import CIFAR10, cifar

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    root = tmp_path / "cifar10"
    with pytest.raises(ManidpError) as e:
        data_mod.load_cifar(root, download=True)
    msg = str(e.value)
    assert "Temporary failure in name resolution" in msg and CIFAR10.url in msg and CIFAR10.tgz_md5 in msg
    assert f"put it at {root / CIFAR10.filename}" in msg
    if MINI.is_file():
        assert "subset" in data_mod.load_cifar(MINI, download=True, cache_dir=tmp_path).source
    root.mkdir()
    (root / "notes.txt").write_text("not a dataset")
    assert data_mod._needs_download(root, data_mod._cifar_spec("cifar10"))     # a folder without a copy
