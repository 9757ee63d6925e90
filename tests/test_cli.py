"""The command line itself: --version, help text, no torch import for help and argument errors, and a
closed pipe ending the process quietly as it ends a Unix tool."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import manidp
from manidp import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

# Runs the command line in a fresh interpreter and reports whether torch got imported.
PROBE = """
import sys
from manidp.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
"""


def probe(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=ENV,
                          timeout=120)


def test_version_is_the_package_version():
    r = subprocess.run([sys.executable, "-m", "manidp", "--version"], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0 and r.stdout == f"manidp {manidp.__version__}\n"
    assert manidp.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train-baseline", "--help"], ["evaluate", "--help"],
                                  ["train-baseline", "--arch", "resnet20"], ["bogus"]])
def test_help_and_argument_errors_do_not_import_torch(argv):
    r = probe(*argv)
    assert r.stderr.strip().splitlines()[-1] == "torch imported: False", r.stderr


def test_prune_help_still_lists_every_method_option():
    r = probe("prune", "--help")          # prune's options come from the methods (torch is needed here)
    assert r.returncode == 0 and "--lambda-sparse" in r.stdout and "--lambda-l1" in r.stdout, r.stdout   # ManiDP, FBS


def _helps(parser) -> list[str]:
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:
        texts += [p.format_help() for p in action.choices.values()]
    return texts


def test_help_text_has_no_rst_markup():
    texts = _helps(cli.build_parser())
    assert len(texts) == 6                # manidp and its five commands
    for text in texts:
        assert "`" not in text, text


def test_closed_pipe_ends_quietly():
    """`manidp macs --arch resnet34 --layers | head -3`, made deterministic: the reader is gone before
    the first line is written, so every write meets a closed pipe."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "manidp", "macs", "--arch", "resnet34", "--layers"],
                           stdout=write, stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    finally:
        os.close(write)
    assert r.stderr == ""                            # no BrokenPipeError traceback
    assert r.returncode == -signal.SIGPIPE           # as `yes | head -1` ends yes


def test_head_of_a_pipe_in_a_shell():
    r = subprocess.run(f"set -o pipefail; {sys.executable} -m manidp macs --arch resnet34 --layers | head -3",
                       shell=True, executable="/bin/bash", capture_output=True, text=True, env=ENV, timeout=120)
    assert len(r.stdout.splitlines()) == 3 and r.stdout.startswith("conv1 ")
    assert r.stderr == "" and r.returncode in (0, 128 + signal.SIGPIPE)


def test_license_and_citation_match_the_package():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "BSD-3-Clause"}
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License\n")
    import yaml
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert (cff["cff-version"], cff["license"], str(cff["version"])) == ("1.2.0", "BSD-3-Clause", meta["version"])
    paper = next(r for r in cff["references"] if r["type"] == "conference-paper")
    assert paper["title"] == "Manifold Regularized Dynamic Network Pruning" and paper["year"] == 2021
    assert [a["family-names"] for a in paper["authors"]] == ["Tang", "Wang", "Xu", "Deng", "Xu", "Tao", "Xu"]
