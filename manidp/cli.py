"""The one command line: ``manidp <command> [options]`` (or ``python -m manidp``).

Commands
  train-baseline  train a dense network
  prune           prune a dense baseline: ManiDP (default), FBS or FPGM (--method)
  evaluate        top-1/top-5 and per-instance MACs of a checkpoint
  macs            dense MACs per layer, and the remain rate for a target MAC reduction
  latency         batch-1 CPU latency of a pruned checkpoint through the channel-skipping engine

User errors (bad paths, options, corrupt files, a diverging loss) print one line and exit 2.

``train-baseline``, ``prune`` and ``evaluate`` also run as ``torchrun --nproc_per_node N -m manidp ...``
(one process per GPU, or gloo processes on CPU; ``manidp/distributed.py``): ``--batch-size`` stays
the global batch and only rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import ManidpError

# Plain text for --help (the module docstring above is for the source; argparse prints text as is).
# torch is imported only by the commands that run, so that --help, --version and argument errors are
# fast; prune's options need the methods (and torch) because each method adds its own.
DESCRIPTION = "manidp: the ManiDP benchmark suite's command line (also python -m manidp)."
EPILOG = ("Run 'manidp <command> --help' for a command's options. User errors print one line "
          "(manidp: error: ...) and exit with status 2.")


def _common_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100", "imagenet"],
                   help="dataset (default: %(default)s)")
    g.add_argument("--data", required=True,
                   help="dataset path: a cifar-10-batches-py folder or archive (full or subset), the CIFAR "
                        "JPEG copy (folder or .tar.gz), or an ImageNet folder with train/ and val/")
    g.add_argument("--image-size", type=int, default=None,
                   help="input resolution (default: 32 for CIFAR, 224 for ImageNet)")
    g.add_argument("--workers", type=int, default=4, help="image-folder loader processes (default: %(default)s)")
    g.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N test instances only")
    g.add_argument("--cache-dir", default=None, help="where decoded JPEG copies are cached (default: ~/.cache/manidp)")
    g.add_argument("--download", action="store_true",
                   help="allow downloading CIFAR with torchvision if --data is missing (needs internet)")


def _common_run(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--arch", required=True, help="resnet20|resnet32|resnet56|resnet110 (CIFAR), resnet18|resnet34 (ImageNet)")
    g.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.json, history.jsonl, config.json, env.json")
    g.add_argument("--epochs", type=int, default=epochs, help="epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=128, help="batch size (default: %(default)s)")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate, cosine-decayed per iteration to 0 (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay of the network; gates get 0 (default: %(default)s)")
    g.add_argument("--grad-clip", type=float, default=None,
                   help="clip the global gradient norm to this value (default: off, as in the official code); "
                        "5 keeps the similarity loss finite on barely trained baselines")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation (default: %(default)s)")
    g.add_argument("--limit-train", type=int, default=None, help="train on the first N training instances only (smoke runs)")
    g.add_argument("--eval-every", type=int, default=1, help="evaluate on the test set every N epochs (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: %(default)s)")
    g.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU; see --amp-dtype)")
    g.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "float16"),
                   help="--amp's dtype: auto (float16 + GradScaler on CUDA, bfloat16 on CPU), bfloat16 or float16 "
                        "(default: %(default)s)")
    g.add_argument("--step", default="eager", choices=("eager", "compile", "graph"),
                   help="how a training step runs: eager, compile (torch.compile) or graph (one CUDA graph per "
                        "step, CUDA only); see docs/gpu.md (default: %(default)s)")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster on recent GPUs)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; set it when several jobs share a machine)")


class _Parser(argparse.ArgumentParser):
    """A bad option gets one line, as every other user error (docs/errors.md), not argparse's usage
    dump; subcommand parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"manidp: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser. prune's options are built only for ``command`` None (all) or "prune": they need the
    methods, and so torch; :func:`main` passes the command of its argv, so other commands, --help and
    --version never import torch for them."""
    parser = _Parser(prog="manidp", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"manidp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("train-baseline", help="train a dense network",
                       description="Train a dense (plain) ResNet: Nesterov SGD, cosine lr per iteration. Resumes from --out.")
    _common_run(p, epochs=200, lr=0.1)
    _common_data(p)

    p = sub.add_parser("prune", help="prune a dense baseline: ManiDP (default), FBS or FPGM",
                       description="Prune a dense baseline with --method: manidp (Tang et al., CVPR 2021; gated "
                                   "training with the complexity-weighted sparsity loss and the similarity alignment "
                                   "loss), fbs (Gao et al., ICLR 2019; dynamic top-k channels) or fpgm (He et al., "
                                   "CVPR 2019; static, physically pruned). Same harness, checkpoints and MAC counter "
                                   "for all; see docs/methods.md. Resumes from --out.")
    if command not in (None, "prune"):
        _add_other_commands(sub)
        return parser
    _common_run(p, epochs=400, lr=0.05)
    _common_data(p)
    from .losses import LossOptions
    from .methods import METHODS, PRUNING
    _DEFAULTS = LossOptions()
    g = p.add_argument_group("pruning (every method)")
    g.add_argument("--method", choices=PRUNING, default="manidp",
                   help="manidp (default), fbs or fpgm (manidp/methods/)")
    g.add_argument("--baseline", required=True, help="dense checkpoint: ours, or a torchvision resnet18/34 state dict")
    t = g.add_mutually_exclusive_group(required=True)
    t.add_argument("--remain-rate", type=float,
                   help="target remain rate t in (0, 1]: ManiDP's t (official example: 0.6), FBS's density d, "
                        "FPGM's fraction of conv_a filters kept")
    t.add_argument("--target-reduction", type=float,
                   help="target MAC reduction in %%; turned into the remain rate that reaches it")
    g.add_argument("--gate-init", choices=["zero", "kaiming"], default="zero",
                   help="weights of the fresh gates' last FC layer (ManiDP, FBS): zero, so the gated network starts "
                        "as the baseline (default), or kaiming as the official ManiDP code (see manidp/models/gate.py)")
    g = p.add_argument_group("ManiDP (--method manidp; the ablations are these options)")
    g.add_argument("--lambda-sparse", type=float, default=_DEFAULTS.lambda_sparse,
                   help="lambda_1, weight of the sparsity loss (official code: %(default)s)")
    g.add_argument("--lambda-sim", type=float, default=_DEFAULTS.lambda_sim,
                   help="lambda_2, weight of the similarity alignment loss (official code: %(default)s)")
    g.add_argument("--gamma", type=float, default=_DEFAULTS.gamma, help="exponent of the complexity weight (default: %(default)s)")
    g.add_argument("--complexity-scale", type=float, default=_DEFAULTS.complexity_scale,
                   help="C = scale x previous-epoch mean CE (default: %(default)s)")
    g.add_argument("--no-detach-weight", dest="detach_weight", action="store_false",
                   help="let gradient flow through the complexity weight into CE, as the official code does "
                        "(default: detached; see manidp/losses.py)")
    g.add_argument("--no-complexity-weighting", dest="complexity_weighting", action="store_false",
                   help="ablation: w_i = 1 for every instance")
    g.add_argument("--detach-features", action="store_true",
                   help="beyond the paper: the similarity loss trains only the gates towards the features' "
                        "similarities, never the features (default: off, as published; see manidp/losses.py)")
    g.add_argument("--fine-tune-epochs", type=int, default=0,
                   help="train the last K epochs at the target remain rate: the cosine schedule reaches it after "
                        "epoch E-K instead of after the last epoch, whose thresholds are then never trained with "
                        "(default: %(default)s, the official schedule; short runs need K >= 1)")
    g.add_argument("--first-threshold-epoch", type=int, default=0, metavar="E",
                   help="set the thresholds first after 0-based epoch E (default: %(default)s, after every epoch; the "
                        "official code: 1, so its first two epochs train with every gate open)")
    g.add_argument("--no-calibrate-macs", dest="calibrate_macs", action="store_false",
                   help="keep the official threshold rule (k-th largest epoch-mean saliency) when the schedule reaches "
                        "the target; by default those thresholds are bisected onto the MAC target (manidp/calibrate.py)")
    g.add_argument("--calibration-instances", type=int, default=1024,
                   help="training instances the MAC calibration measures on (default: %(default)s)")
    p.add_argument("--bn-reestimate", type=int, default=0, metavar="N",
                   help="after the last epoch, re-estimate BatchNorm statistics with the final masks on N training "
                        "instances (default: %(default)s, off)")
    for m in METHODS.values():
        if m.prunes and m.name != "manidp":
            m.add_arguments(p.add_argument_group(f"{m.name.upper()} (--method {m.name})"))
    _add_other_commands(sub)
    return parser


def _add_other_commands(sub) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 and per-instance MACs of a checkpoint",
                       description="Evaluate a manidp checkpoint as it is (final thresholds): top-1, top-5, and "
                                   "mean/std/min/max/histogram of per-instance MACs and per-layer keep rates.")
    p.add_argument("--checkpoint", required=True, help="a manidp checkpoint.pt")
    p.add_argument("--out", default=None, help="write the result as JSON here (default: print only)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    _common_data(p)

    p = sub.add_parser("latency", help="batch-1 latency of a pruned checkpoint through the channel-skipping engine",
                       description="Convert a ManiDP checkpoint to the channel-skipping engine (manidp.accel), "
                                   "check it against the masked model on real test images (same predictions, "
                                   "executed MACs = analytic count), and time dense, masked and engine at "
                                   "batch 1 on the CPU, side by side, on the first --limit-test images "
                                   "(default 32).")
    p.add_argument("--checkpoint", required=True, help="a ManiDP checkpoint.pt (gated model)")
    p.add_argument("--out", default=None, help="write the result as JSON here (default: print only)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the images (default: %(default)s)")
    p.add_argument("--kernel", default="auto", choices=["auto", "native", "torch"],
                   help="engine kernel: the C kernel (native), PyTorch ops (torch), or native where a "
                        "C compiler is found (auto; default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    _common_data(p)
    p.set_defaults(limit_test=32)          # timing every test image at batch 1 would take long

    p = sub.add_parser("macs", help="dense MACs per layer; remain rate for a target reduction",
                       description="Analytic MAC counts (multiply-accumulates of conv and FC layers; the literature's "
                                   "'FLOPs'). Gate cost is reported on its own line.")
    p.add_argument("--arch", required=True, help="architecture")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: 10 for CIFAR, 1000 for ImageNet)")
    p.add_argument("--image-size", type=int, default=None, help="input resolution (default: the architecture's)")
    p.add_argument("--target-reduction", type=float, default=None, help="print the remain rate that reaches this MAC reduction in %%")
    p.add_argument("--layers", action="store_true", help="print every layer")
    p.add_argument("--json", action="store_true", help="print JSON")


def _train_config(args: argparse.Namespace, method: str):
    from .losses import LossOptions
    from .methods import method_options_from_args
    from .train import TrainConfig
    losses = LossOptions()
    method_options = method_options_from_args(args, method)   # an option of another method is an error
    if method == "manidp":
        losses = LossOptions(lambda_sparse=args.lambda_sparse, lambda_sim=args.lambda_sim, gamma=args.gamma,
                             complexity_scale=args.complexity_scale, detach_weight=args.detach_weight,
                             complexity_weighting=args.complexity_weighting, detach_features=args.detach_features)
    return TrainConfig(
        method=method, arch=args.arch, dataset=args.dataset, data=args.data, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, seed=args.seed, device=args.device, amp=args.amp, amp_dtype=args.amp_dtype, step=args.step, channels_last=args.channels_last,
        workers=args.workers, image_size=args.image_size, limit_train=args.limit_train,
        limit_test=args.limit_test, eval_every=args.eval_every, cache_dir=args.cache_dir,
        download=args.download, baseline=getattr(args, "baseline", None),
        remain_rate=getattr(args, "remain_rate", None), target_reduction=getattr(args, "target_reduction", None),
        gate_init=getattr(args, "gate_init", "zero"), losses=losses, method_options=method_options,
        fine_tune_epochs=getattr(args, "fine_tune_epochs", 0) if method == "manidp" else 0,
        first_threshold_epoch=getattr(args, "first_threshold_epoch", 0) if method == "manidp" else 0,
        calibrate_macs=getattr(args, "calibrate_macs", True), calibration_instances=getattr(args, "calibration_instances", 1024),
        bn_reestimate=getattr(args, "bn_reestimate", 0))


def cmd_train(args, method: str) -> None:
    from .distributed import env_rank
    from .train import run
    result = run(_train_config(args, method), show_progress=not args.quiet)
    if env_rank() == 0:             # under torchrun, only rank 0 prints
        print(_result_line(result))
        print(f"wrote {Path(args.out) / 'metrics.json'}")


def cmd_evaluate(args) -> None:
    from .distributed import launch
    with launch(args.device) as world:          # under torchrun: each process evaluates its shard
        _evaluate(args, world)


def _evaluate(args, world) -> None:
    from .checkpoint import model_from_checkpoint
    from .data import build_loaders
    from .evaluate import evaluate
    from .io import write_json
    from .provenance import environment
    device = world.device
    model, ckpt = model_from_checkpoint(args.checkpoint)
    cfg = ckpt.get("config", {})
    image_size = args.image_size or model.input_size
    _, test_loader, info = build_loaders(args.dataset, args.data, args.batch_size, device=device,
                                         seed=0, workers=args.workers, image_size=image_size,
                                         cache_dir=args.cache_dir, download=args.download,
                                         limit_test=args.limit_test, shard=(world.rank, world.size))
    if info["num_classes"] != model.num_classes:
        raise ManidpError(f"checkpoint {args.checkpoint} has {model.num_classes} classes but --data "
                          f"{args.data} has {info['num_classes']}: evaluate on the dataset it was trained on")
    _check_same_classes(ckpt, info, args)
    from .methods import checkpoint_method
    model = checkpoint_method(ckpt).deployable(model).to(device)   # FPGM: the physically pruned network
    result = evaluate(model, test_loader, device, input_size=image_size,
                      show_progress=not args.quiet and world.main, source=f"checkpoint {args.checkpoint}")
    if not world.main:
        return
    result.update(checkpoint=str(args.checkpoint), arch=model.arch, gated=model.gated,
                  method=cfg.get("method"), seed=cfg.get("seed"), epochs=ckpt.get("epoch"),
                  thresholds=model.thresholds(), data_source=info.get("source"),
                  environment=environment(device, cfg.get("seed")))
    if cfg.get("target_reduction") is not None:      # realized vs the MAC target the run was given
        from .calibrate import mac_target
        result.update(mac_target(result["macs"]["reduction_pct"], float(cfg["target_reduction"])))
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    print(_result_line(result))


def cmd_macs(args) -> None:
    from .macs import costs_table, dense_macs, gate_macs, remain_rate_for_reduction
    from .models import build_model
    model = build_model(args.arch, num_classes=args.num_classes, gated=True)
    size = args.image_size or model.input_size
    result = {"arch": args.arch, "input_size": size, "dense_macs": dense_macs(model, size),
              "gate_macs": gate_macs(model), "gates": len(model.gates())}
    if args.target_reduction is not None:
        result["target_reduction_pct"] = args.target_reduction
        result["remain_rate"] = remain_rate_for_reduction(model, args.target_reduction, size)
    if args.layers:
        result["layers"] = costs_table(model, size)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    if args.layers:
        for row in result["layers"]:
            print(f"{row['name']:<24} {row['kind']:<9} k={row['k']} {row['c_in']:>4}->{row['c_out']:<4} "
                  f"{row['h_out']:>3}x{row['w_out']:<3} {row['macs']:>14,}")
    print(f"{args.arch} at {size}x{size}: {result['dense_macs']:,} MACs (conv + FC, dense)")
    print(f"gates ({result['gates']}, reported separately): {result['gate_macs']:,} MACs")
    if "remain_rate" in result:
        print(f"remain rate for {args.target_reduction}% MAC reduction (uniform keep): {result['remain_rate']:.4f}")


def cmd_latency(args) -> None:
    import torch

    from .checkpoint import model_from_checkpoint
    from .data import build_loaders
    from .io import write_json
    from .latency import DENSE_NAMES, TIE_TOLERANCE, measure
    from .provenance import environment
    if args.repeats < 1:
        raise ManidpError(f"--repeats must be >= 1 (got {args.repeats})")
    model, ckpt = model_from_checkpoint(args.checkpoint)
    if not model.gated:
        from .methods import checkpoint_method
        name = checkpoint_method(ckpt).name
        kind = "a dense (ungated) model" if name == "baseline" else f"an ungated {name} model"
        raise ManidpError(f"checkpoint {args.checkpoint} is {kind}: latency needs a pruned (gated) "
                          f"checkpoint, the checkpoint.pt of a manidp prune run")
    model = model.eval()
    image_size = args.image_size or model.input_size
    _, test_loader, info = build_loaders(args.dataset, args.data, 64, device=torch.device("cpu"), seed=0,
                                         workers=args.workers, image_size=image_size,
                                         cache_dir=args.cache_dir, download=args.download,
                                         limit_test=args.limit_test)
    if info["num_classes"] != model.num_classes:
        raise ManidpError(f"checkpoint {args.checkpoint} has {model.num_classes} classes but --data "
                          f"{args.data} has {info['num_classes']}: use the dataset it was trained on")
    _check_same_classes(ckpt, info, args)
    batches = [(x, y) for x, y in test_loader]
    images, labels = torch.cat([b[0] for b in batches]).float(), torch.cat([b[1] for b in batches])
    r = measure(model, images, labels, repeats=args.repeats, kernel=args.kernel,
                show_progress=not args.quiet)
    cfg = ckpt.get("config", {})
    r.update(checkpoint=str(args.checkpoint), method=cfg.get("method"), data_source=info.get("source"),
             environment=environment(torch.device("cpu"), cfg.get("seed")))
    if args.out:
        write_json(args.out, r)
        print(f"wrote {args.out}")
    ms = r["latency_ms"]
    for name, why in r["dense_engines"]["missing"].items():
        print(f"note: not timed: {why}", file=sys.stderr)
    dense = ", ".join(f"{DENSE_NAMES[k]} {ms[k]:.2f} ms" for k in DENSE_NAMES if k in ms)
    diffs = "".join(f", {DENSE_NAMES[k]} max |logit diff| vs PyTorch {v:.1e}"
                    for k, v in r["dense_engines"]["max_abs_diff"].items())
    print(f"{r['arch']} @{r['input_size']}, {r['images']} test images, batch 1, {r['threads']} thread(s), "
          f"engine kernel {r['kernel']} ({r['kernel_isa'] or 'PyTorch ops'} on a {r['cpu_isa']} CPU): "
          f"dense: {dense}; masked {ms['masked']:.2f} ms, engine {ms['engine']:.2f} ms = "
          f"{r['speedup']:.2f}x over the fastest dense ({DENSE_NAMES[r['best_dense']]}; MAC reduction "
          f"{r['reduction_pct']:.1f}%, theoretical {r['theoretical_speedup']:.2f}x{diffs})")
    if r["nonfinite_masked"]:
        print(f"warning: the masked model's logits are not finite on {r['nonfinite_masked']} of {r['images']} "
              f"images (the checkpoint's activations overflow); they are left out of the check",
              file=sys.stderr)
    finite = r["images"] - r["nonfinite_masked"]
    if not r["same_decisions"]:
        raise ManidpError(f"checkpoint {args.checkpoint}: no image could be checked against the masked model "
                          "(non-finite logits or other gate decisions on all of them)")
    print(f"engine vs masked model: the same gate decisions on {r['same_decisions']}/{finite} images, and on "
          f"those the same prediction on {r['same_prediction']}, max relative logit error "
          f"{r['max_rel_logit_error']:.1e}, executed MACs "
          f"{'equal to' if r['executed_equals_analytic'] else 'DIFFERENT FROM'} the analytic count; "
          f"top-1 {r['top1_engine']:.1f}% (masked {r['top1_masked']:.1f}%)")
    if r["differing_decisions"]:
        explained = r["differing_decisions"] - r["differing_unexplained"]
        print(f"{r['differing_decisions']} image(s) with other gate decisions: {explained} at a saliency within "
              f"{TIE_TOLERANCE:g} of its threshold (float summation order decides there)"
              + (f"; {r['differing_unexplained']} NOT explained by rounding" if r["differing_unexplained"] else ""))


def _check_same_classes(ckpt: dict, info: dict, args) -> None:
    """Label numbers mean classes: data with other label names would be scored against wrong labels."""
    saved = ckpt.get("classes")
    if saved and info.get("classes") and list(saved) != list(info["classes"]):
        raise ManidpError(f"checkpoint {args.checkpoint} was trained on classes {list(saved)}, but --data "
                          f"{args.data} holds {list(info['classes'])}: use the dataset it was trained on")


def _result_line(r: dict) -> str:
    if "stopped_after_epoch" in r:
        return f"stopped after epoch {r['stopped_after_epoch']}"
    line = f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%"
    if "macs" in r:
        m = r["macs"]
        line += (f"  MACs {m['macs_mean'] / 1e6:.2f}M (std {m['macs_std'] / 1e6:.2f}M) of {m['dense_macs'] / 1e6:.2f}M dense"
                 f" = {m['reduction_pct']:.1f}% reduction; gates +{m['gate_macs'] / 1e6:.3f}M")
    return line


def _command_of(argv: list[str]) -> str:
    """The command word of argv ("" if none): the first word that is not an option, since the only
    options before it (--help, --version) take no value."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    if argv is None and hasattr(signal, "SIGPIPE"):
        # As Unix tools do: a closed pipe (manidp macs --layers | head -3) ends the process quietly
        # instead of a BrokenPipeError traceback. Only for the real command line, not for callers.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ManidpError(f"--threads must be >= 1 (got {args.threads})")
            import torch
            torch.set_num_threads(args.threads)
        if args.command == "train-baseline":
            cmd_train(args, "baseline")
        elif args.command == "prune":
            cmd_train(args, args.method)
        elif args.command == "evaluate":
            cmd_evaluate(args)
        elif args.command == "macs":
            cmd_macs(args)
        elif args.command == "latency":
            cmd_latency(args)
    except ManidpError as e:
        print(f"manidp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("manidp: interrupted; the last checkpoint is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
