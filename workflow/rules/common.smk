# Helpers shared by every rule: the validated config, the experiment list, output paths and the
# command-line options each step gets. Nothing here reads a dataset, so `snakemake -n` always works.

import shlex
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.main_snakefile).resolve().parent
if str(REPO) not in sys.path:  # the manidp package, even when it is not pip-installed
    sys.path.insert(0, str(REPO))

from manidp.errors import ManidpError
from manidp.report import experiments as exps
from manidp.report import published as pub

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _coerce(value, schema):
    """--config KEY=[0,1,2] arrives as strings (Snakemake parses nested values with YAML's
    BaseLoader): turn strings back into the numbers/booleans/nulls the schema asks for."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _coerce(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v, schema.get("items", {})) for v in value]
    if isinstance(value, str) and "string" not in types and types:
        parsed = yaml.safe_load(value) if value.strip() else value
        if isinstance(parsed, (int, float, bool)) or parsed is None:
            return parsed
    return value


def _validate_config():
    """Snakemake's validate (which also fills the defaults), with the first error as one line."""
    config.update(_coerce(dict(config), yaml.safe_load(SCHEMA.read_text())))
    try:
        validate(config, str(SCHEMA))
    except WorkflowError:
        schema = yaml.safe_load(SCHEMA.read_text())
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
        if error is None:
            raise
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        raise WorkflowError(f"invalid config at {where}: {error.message} "
                            f"(keys and types: workflow/schemas/config.schema.yaml)") from None


_validate_config()

RESULTS = config["results"].rstrip("/")
TABLES = config["tables"].rstrip("/")
SMOKE = config["smoke"]
LABEL = config["label"]
SEEDS = config["seeds"]

if SMOKE and any(Path(p).resolve() == (REPO / full).resolve()
                 for p, full in ((RESULTS, "results"), (TABLES, "paper_tables"))):
    raise WorkflowError("smoke: true needs its own results and tables folders (e.g. results: results/smoke, "
                        "tables: results/smoke/paper_tables) so that it never overwrites full-run outputs")

try:
    PUBLISHED = pub.load(config["published"])
    EXPERIMENTS = exps.load(config["experiments"], PUBLISHED, methods=list(config["methods"]))
except ManidpError as e:
    raise WorkflowError(str(e)) from None

_unknown = [a for a in config["archs"] if a not in {x.arch for x in EXPERIMENTS}]
if _unknown:
    raise WorkflowError(f"invalid config at archs: {_unknown[0]!r} is not an architecture of "
                        f"{config['experiments']}; choose among {', '.join(sorted({x.arch for x in EXPERIMENTS}))}")
if config["archs"]:
    EXPERIMENTS = [x for x in EXPERIMENTS if x.arch in config["archs"]]
DATASETS = list(dict.fromkeys(x.dataset for x in EXPERIMENTS))

wildcard_constraints:
    dataset="|".join(exps.ARCHS),
    arch="resnet[0-9]+",
    seed="[0-9]+",
    point="[A-Za-z0-9]+",
    method="[a-z][a-z0-9_]*",
    variant="baseline|[a-z][a-z0-9_]*-[A-Za-z0-9]+",
    run="seed[0-9]+|torchvision",


# ------------------------------------------------------------------------------ paths

def run_dir(dataset, arch, variant, run):
    """The folder of one run: {results}/{dataset}/{arch}/{variant}/{run}."""
    return f"{RESULTS}/{dataset}/{arch}/{variant}/{run}"


def uses_torchvision(dataset):
    return dataset == "imagenet" and config["imagenet_baseline"]["source"] == "torchvision"


def baseline_run(dataset, seed):
    """The baseline a run of `seed` starts from: the same seed, or torchvision's weights."""
    return "torchvision" if uses_torchvision(dataset) else f"seed{seed}"


def done_marker(dataset, arch, variant, run):
    """The file that says a run is complete: metrics.json is written last by `manidp train-baseline`
    and `manidp prune` (their checkpoint.pt is not a declared output, so Snakemake never deletes it
    and an interrupted run resumes); an imported torchvision baseline is its checkpoint.pt."""
    name = "checkpoint.pt" if run == "torchvision" else "metrics.json"
    return f"{run_dir(dataset, arch, variant, run)}/{name}"


def experiment(wildcards):
    for x in EXPERIMENTS:
        if (x.dataset, x.arch, x.method, x.point) == (wildcards.dataset, wildcards.arch, wildcards.method,
                                                      wildcards.point):
            return x
    raise WorkflowError(f"no experiment {wildcards.dataset} {wildcards.arch} {wildcards.method} point "
                        f"{wildcards.point} in {config['experiments']} (or excluded by archs)")


def row_seeds(x):
    """The seeds of one experiment row: its own seeds column, else the config's seeds."""
    return list(x.seeds) if x.seeds is not None else SEEDS


def run_specs(dataset):
    """Every evaluated model of a dataset: its baselines (one per seed any row of the architecture
    uses), then its pruned runs, each over its row's seeds."""
    specs = []
    for arch in dict.fromkeys(x.arch for x in EXPERIMENTS if x.dataset == dataset):
        seeds = [s for x in EXPERIMENTS if (x.dataset, x.arch) == (dataset, arch) for s in row_seeds(x)]
        for run in dict.fromkeys(baseline_run(dataset, s) for s in sorted(set(seeds))):
            specs.append(dict(dataset=dataset, arch=arch, variant="baseline", point="", published=pub.BASELINE,
                              run=run, seed=None if run == "torchvision" else int(run[4:]),
                              baseline_run="", target_reduction=0.0))
    for x in EXPERIMENTS:
        if x.dataset != dataset:
            continue
        for s in row_seeds(x):
            specs.append(dict(dataset=dataset, arch=x.arch, variant=x.variant, point=x.point,
                              published=x.published, run=f"seed{s}", seed=s,
                              baseline_run=baseline_run(dataset, s), target_reduction=x.target_reduction))
    for spec in specs:
        spec["eval"] = f"{run_dir(spec['dataset'], spec['arch'], spec['variant'], spec['run'])}/eval.json"
    return specs


def eval_files(wildcards):
    return [s["eval"] for s in run_specs(wildcards.dataset)]


def data_path(dataset):
    return config["data"][dataset]["path"]


def synthetic_marker(wildcards):
    if wildcards.dataset == "imagenet" and config["data"]["imagenet"]["synthetic"]["enabled"]:
        return f"{data_path('imagenet')}/SYNTHETIC.txt"
    return []


def baseline_done(wildcards):
    run = baseline_run(wildcards.dataset, wildcards.seed)
    return done_marker(wildcards.dataset, wildcards.arch, "baseline", run)


def data_ready(wildcards):
    """Every training step waits for the dataset check (ancient: a re-check never retrains)."""
    return ancient(f"{RESULTS}/{wildcards.dataset}/data.json")


# ------------------------------------------------------------------------------ command lines

def cli_options(options):
    """{"batch_size": 128, "amp": False, "detach_weight": False} -> "--batch-size 128 --no-detach-weight"."""
    words = []
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        if key in ("detach_weight", "complexity_weighting", "calibrate_macs"):  # on by default; the CLI has --no-...
            if not value:
                words.append(f"--no-{key.replace('_', '-')}")
        elif isinstance(value, bool):
            if value:
                words.append(flag)
        elif value is not None:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def common_options(dataset):
    opts = {"device": config["device"]}
    if dataset != "imagenet" and config["data"][dataset].get("cache_dir"):
        opts["cache_dir"] = config["data"][dataset]["cache_dir"]
    return opts


def baseline_options(wildcards):
    return cli_options({**config["baseline"][wildcards.dataset], **common_options(wildcards.dataset)})


# ManiDP's own options in config manidp.<dataset> (losses, schedule): not passed to the other methods.
MANIDP_LOSS_KEYS = ("lambda_sparse", "lambda_sim", "gamma", "complexity_scale", "detach_weight", "complexity_weighting",
                    "fine_tune_epochs", "first_threshold_epoch", "calibrate_macs", "calibration_instances", "detach_features")


def method_name(wildcards):
    """The `manidp prune --method` of the config's methods entry {method} (manidp, fbs, fpgm)."""
    return config["methods"][wildcards.method]["method"]


def manidp_options(wildcards):
    """`manidp prune` options of one experiment: the dataset's training recipe (config manidp.<dataset>,
    the same budget for every method), the method entry's own options, the row's loss weights."""
    x = experiment(wildcards)
    entry = {k: v for k, v in config["methods"][wildcards.method].items() if k != "method"}
    opts = dict(config["manidp"][wildcards.dataset])
    if method_name(wildcards) != "manidp":
        opts = {k: v for k, v in opts.items() if k not in MANIDP_LOSS_KEYS}
    opts.update(entry)
    if x.lambda_sparse is not None:
        opts["lambda_sparse"] = x.lambda_sparse
    if x.lambda_sim is not None:
        opts["lambda_sim"] = x.lambda_sim
    if x.epochs is not None:
        opts["epochs"] = x.epochs
    opts["target_reduction"] = x.target_reduction
    return cli_options({**opts, **common_options(wildcards.dataset)})


def evaluate_options(wildcards):
    return cli_options({**config["evaluate"][wildcards.dataset], **common_options(wildcards.dataset)})


# ------------------------------------------------------------------------------ cluster resources

def job_resources(rule):
    """What a job of `rule` asks a cluster for (config key cluster; profiles/slurm): CPUs, memory and
    wall time, the site's partition and account when set, and GPUs only when the config trains on a
    GPU (device is not cpu), as gpu/gpu_model (sbatch --gpus) or gres (--gres). Unset keys are left
    out, so that a profile's default-resources apply."""
    c, job = config["cluster"], config["cluster"][rule]
    res = {"mem_mb": job["mem_mb"], "runtime": job["runtime"], "cpus_per_task": job["cpus"],
           "slurm_partition": c["partition"], "slurm_account": c["account"]}
    gpus = job["gpus"] if config["device"] != "cpu" else 0
    if gpus and c["gpu_request"] == "gres":
        res["gres"] = ":".join(["gpu"] + ([c["gpu_model"]] if c["gpu_model"] else []) + [str(gpus)])
    elif gpus:
        res.update(gpu=gpus, gpu_model=c["gpu_model"])
    return {k: v for k, v in res.items() if v is not None}


def launcher(wildcards, resources):
    """`manidp`, or `torchrun --standalone --nproc_per_node N -m manidp` when a training job is given
    N > 1 GPUs (resources gpu, or gres gpu[:model]:N): one DistributedDataParallel process per GPU
    with the same global batch (manidp/distributed.py)."""
    gpus = resources.get("gpu", 0) or 0
    gres = str(resources.get("gres", "") or "")
    if not gpus and gres.startswith("gpu"):
        gpus = gres.rsplit(":", 1)[-1] if ":" in gres else 1
    n = int(gpus)
    return f"torchrun --standalone --nproc_per_node {n} -m manidp" if n > 1 else "manidp"


# ------------------------------------------------------------------------------ targets

def table_targets(dataset):
    return [f"{TABLES}/{dataset}.tex", f"{TABLES}/{dataset}.md"]


PLOTS = ("top1_vs_macs", "macs_histogram", "keep_rates", "methods", "budget")
PLOT_NAMES = {"top1_vs_macs": "top-1 vs MACs, published and ours", "macs_histogram": "per-instance MACs",
              "keep_rates": "per-layer keep rates", "methods": "methods, top-1 vs MACs",
              "budget": "top-1 against pruning budget"}


def all_targets():
    out = []
    for ds in DATASETS:
        out += table_targets(ds)
        out += [f"{RESULTS}/{ds}/comparison.csv", f"{RESULTS}/{ds}/comparison.md"]
        out += [f"{RESULTS}/{ds}/methods.csv", f"{RESULTS}/{ds}/methods.md"]
        out += [f"{RESULTS}/{ds}/plots/{p}.{ext}" for p in PLOTS for ext in ("png", "pdf")]
    return out + report_targets()      # the report's pages (workflow/rules/report.smk)


# ------------------------------------------------------------------------------ the report (report.smk)

# (page, what it renders, caption, label): one HTML page per table of a dataset.
REPORT_PAGES = {
    "table": ("the paper's table with our rows", "table.rst"),
    "comparison": ("published vs ours, with tolerance status", "comparison.rst"),
    "methods": ("every method side by side", "methods.rst"),
    "summary": ("mean, std and n over seeds (summary.csv)", "summary.rst"),
    "runs": ("one row per evaluated model (runs.csv)", "runs.rst"),
}


def report_page(dataset, page):
    return f"{RESULTS}/{dataset}/report/{page}.html"


def report_targets():
    return [report_page(ds, p) for ds in DATASETS for p in REPORT_PAGES] + [f"{RESULTS}/report/summary.rst"]


def _page_labels(page):
    what, _ = REPORT_PAGES[page]
    return lambda wc: {"dataset": pub.DATASET_NAMES[wc.dataset],
                       "table": f"Table {pub.TABLE_NUMBERS[wc.dataset]}: {what}" if page == "table" else what}


def _refuse_an_unbuilt_report():
    """`snakemake --report` of a DAG whose outputs are (partly) missing: one line naming the first
    missing file and the command that builds it, instead of Snakemake's error about one report item.
    (With --report-after-run the report follows the run, so nothing is missing.)"""
    args = sys.argv[1:]
    if not any(a == "--report" or a.startswith("--report=") for a in args) or "--report-after-run" in args:
        return
    missing = [t for t in all_targets() if not Path(t).exists()]
    if not missing:
        return
    build, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
        elif a == "--report":
            skip = i + 1 < len(args) and args[i + 1].endswith((".html", ".zip"))
        elif not a.startswith("--report="):
            build.append(a)
    if not any(a in ("--cores", "-c", "--jobs", "-j", "--profile") or a.startswith(("--cores=", "--profile="))
               for a in build):
        build = ["--cores", "all"] + build
    sys.exit(f"manidp: error: the report needs the built DAG, and {missing[0]} is missing "
             f"({len(missing)} of {len(all_targets())} outputs); build it first: "
             f"snakemake {shlex.join(build)} (target all), then rerun the report")


_refuse_an_unbuilt_report()
