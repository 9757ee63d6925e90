"""Every `snakemake ...` command of README.md and docs/*.md works as typed: each is dry-run (`-n`)
in a temporary copy of the workflow, with the README's own site.yaml as the stand-in site file.

A multi-value option (--configfile, --config, --resources) followed by a target swallows the
target; these dry runs catch that, and any option or path a command names that does not exist.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from test_pipeline import ROOT, job_counts, make_workdir, snakemake

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(path: Path) -> list[str]:
    """The snakemake commands of a Markdown file: lines of fenced code blocks (backslash
    continuations joined, `# ...` comments cut), and inline code spans, without a leading `time`.
    A span with `...` or a `<placeholder>` is a pattern or a fragment of a longer command."""
    text = path.read_text()
    found = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        found += [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
                  if re.match(r"\s*(time )?snakemake ", line)]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    found += [shlex.split(span) for span in re.findall(r"`((?:time )?snakemake [^`]+)`", prose)
              if "..." not in span and not re.search(r"<\w+>", span)]
    return [shlex.join(words[1:] if words[0] == "time" else words) for words in found]


def _dag_key(command: str) -> tuple[str, ...]:
    """Two commands that differ only in --cores or -n dry-run the same DAG: one test for both."""
    words, key = shlex.split(command), []
    for i, w in enumerate(words):
        if w in ("-n", "--dry-run") or w in ("--cores", "-c") or (i and words[i - 1] in ("--cores", "-c")):
            continue
        key.append(w)
    return tuple(key)


COMMANDS, _KEYS = [], set()
for _command in (c for doc in DOCS for c in _commands(doc)):
    if _dag_key(_command) not in _KEYS:
        _KEYS.add(_dag_key(_command))
        COMMANDS.append(_command)


def _site_yaml() -> str:
    """The README's site.yaml (the block that starts with `# site.yaml:`)."""
    block = re.search(r"```yaml\n(# site\.yaml:.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no site.yaml example"
    return block.group(1)


@pytest.fixture(scope="module")
def docs_workdir(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("docs"))
    (wd / "site.yaml").write_text(_site_yaml())
    return wd


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 10, COMMANDS
    # the form that swallows a target is gone (it fails with a traceback: README, "Running on a cluster")
    swallowing = [c for c in COMMANDS if re.search(r"--(configfile|resources) [^-]+ paper_tables/", c)]
    assert not swallowing, swallowing


CONDA_LINT = "Specify a conda environment or container for each rule."


def _assert_only_the_explained_lint(r):
    """`snakemake --lint` finds nothing but the per-rule conda environment that docs/pipeline.md
    ("Lint") explains; any other lint (or a new rule without it) fails here."""
    out = r.stdout + r.stderr
    lints = {line.strip()[2:].rstrip(":") for line in out.splitlines() if line.startswith("    * ")}
    assert lints <= {CONDA_LINT}, lints
    assert "Traceback" not in out


def test_lint(docs_workdir):
    _assert_only_the_explained_lint(snakemake(docs_workdir, "--lint"))


@pytest.mark.parametrize("command", COMMANDS)
def test_doc_command_dry_runs(docs_workdir, command):
    args = shlex.split(command)[1:]
    if "--report" in args:
        # A report of an unbuilt DAG is refused with one line (tests/test_pipeline.py builds one).
        r = snakemake(docs_workdir, *args)
        out = r.stdout + r.stderr
        last = out.strip().splitlines()[-1]
        assert r.returncode == 1 and last.startswith("manidp: error: the report needs the built DAG"), out[-2000:]
        assert "build it first: snakemake --cores all" in last
        assert "Traceback" not in out and "WorkflowError" not in out
        return
    if "--lint" in args:
        _assert_only_the_explained_lint(snakemake(docs_workdir, *args))
        return
    if "--unlock" in args:
        # Troubleshooting's unlock (in the test's copy of the checkout): it removes Snakemake's lock and
        # plans nothing.
        r = snakemake(docs_workdir, *args)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "Unlocked working directory" in out, f"{command}\n{out[-2000:]}"
        return
    if any(a.startswith("--profile") and "slurm" in a for a in args) or any("--slurm" in a for a in args):
        pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    if "-n" not in args and "--dry-run" not in args:
        args = ["-n", *args]
    r = snakemake(docs_workdir, *args)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{command}\n{out[-2000:]}"
    assert job_counts(out)["total"] > 0
    assert not (docs_workdir / "results").exists()


def test_the_docs_quote_no_job_counts():
    """A DAG's job counts are what `snakemake -n` prints; copied into prose they go stale."""
    for doc in DOCS:
        stale = re.findall(r"\b\d+(?: Slurm| local)? jobs\b|\b\d+-job\b", doc.read_text())
        assert not stale, (doc.name, stale)
