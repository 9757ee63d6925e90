"""The training step without per-step host work: eager, compiled (``torch.compile``) or one CUDA graph.

A CIFAR ResNet step at batch 128 is bound by kernel launches and host synchronisation on a GPU, not
by arithmetic: the eager loop of ``train.py`` reads the loss back every step (``float(...)``, the
finiteness check) and ManiDP's gates and losses launch several kernels per gate. ``--step`` picks
how :func:`train_epoch` runs the same step (docs/gpu.md):

``eager``    the loop of ``train.py`` (default; the only mode under torchrun);
``compile``  :class:`StepRunner`'s step through ``torch.compile`` (Inductor on CPU and CUDA);
``graph``    the whole step (forward, both losses, backward, gradient clipping, SGD update, the
             epoch sums and the gate statistics) captured once as a CUDA graph and replayed; CUDA only.

What changes between steps lives in device tensors the step reads in place, so nothing is
re-captured or re-compiled: the learning rate of each parameter group (copied from the scheduler
before each step), ManiDP's reference loss (once per epoch), the thresholds (gate buffers, set in
place at epoch end), the epoch sums and the gate statistics (read once, at the epoch's end). What
stays outside: the threshold update, calibration, BN re-estimation and evaluation (``train.py``).

Exactness: the SGD update is the one of ``torch.optim.SGD`` (weight decay, momentum, Nesterov) in
foreach form with a tensor learning rate, written into the optimizer's own momentum buffers, so
checkpoints are the same and a run may resume in another mode. The first step of every epoch runs
eagerly (it measures how hard each loss term pulls, ``gate_stats.term_grad_norms``), and so does a
batch of another size (the last one of an epoch): one compiled/captured shape. A non-finite loss is
found at the epoch's end (one read per epoch instead of one per step): the run stops there with the
step's number and nothing is written, as in the eager loop. tests/test_fast_step.py checks the
compiled step against the eager loop on the CPU, and the graph against eager where CUDA exists.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ManidpError
from .evaluate import _amp_dtype
from .gate_stats import GateStats, term_grad_norms
from .losses import manidp_loss

STEP_MODES = ("eager", "compile", "graph")
AMP_DTYPES = ("auto", "bfloat16", "float16")
COMPILE_BACKEND = "inductor"   # torch.compile's backend; the quick CPU test uses aot_eager (no code generation)
WARMUP_STEPS = 3      # eager steps on a side stream before a CUDA graph capture (allocator, cuDNN plans)


def check_step_mode(mode: str, amp: bool, amp_dtype: str, device: torch.device | None, processes: int) -> None:
    """One-line errors for combinations the fast step cannot run (``device`` None: before it is known)."""
    if mode not in STEP_MODES:
        raise ManidpError(f"--step {mode!r} is unknown: use one of {', '.join(STEP_MODES)}")
    if amp_dtype not in AMP_DTYPES:
        raise ManidpError(f"--amp-dtype {amp_dtype!r} is unknown: use one of {', '.join(AMP_DTYPES)}")
    if mode == "eager":
        return
    if processes > 1:
        raise ManidpError(f"--step {mode} runs in one process; under torchrun use --step eager")
    if device is not None and mode == "graph" and device.type != "cuda":
        raise ManidpError(f"--step graph needs a CUDA device (got {device}); use --step compile or eager")
    half = amp_dtype == "float16" or (device is not None and _amp_dtype(device, amp_dtype) == torch.float16)
    if amp and half:
        raise ManidpError(f"--step {mode} with --amp needs --amp-dtype bfloat16: float16 needs GradScaler, "
                          f"which reads every step's gradients back to the host")




class StepRunner:
    """One training step of ``cfg.method`` on ``net`` with ``optimizer``, in ``cfg.step`` mode.

    Keep one runner for the whole run (the compiled code and the graph refer to its tensors); call
    :meth:`begin_epoch` before and :meth:`end_epoch` after every epoch.
    """

    def __init__(self, net, optimizer, cfg, device: torch.device):
        from .methods import get_method
        self.net, self.optimizer, self.cfg, self.device = net, optimizer, cfg, device
        self.method = get_method(cfg.method)
        self.amp_dtype = _amp_dtype(device, cfg.amp_dtype)
        self.lrs = [torch.zeros((), dtype=torch.float32, device=device) for _ in optimizer.param_groups]
        self.reference = torch.zeros((), dtype=torch.float64, device=device)
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)       # ce, sparse, sim, correct
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # step of the first non-finite loss
        self.index = torch.zeros((), dtype=torch.long, device=device)         # step within the epoch
        self.gate_stats = GateStats(net) if net.gated else None
        self.params = [p for p in net.parameters() if p.requires_grad]
        self._compiled = torch.compile(self._step, backend=COMPILE_BACKEND) if cfg.step == "compile" else None
        self._graphs: dict = {}         # (batch size, structure) -> (graph, static x, static y)
        self._eager_steps = 0
        self.steps = self.instances = 0

    # --------------------------------------------------------------------------- the step itself

    def _loss(self, logits: torch.Tensor, y: torch.Tensor):
        """(loss, per-instance CE, sparsity term, similarity term) of the method."""
        zero = logits.new_zeros((), dtype=torch.float32)
        if self.cfg.method == "manidp":
            loss, parts = manidp_loss(self.net, logits, y, self.reference, self.cfg.losses)
            return loss, parts["ce"], parts["sparse"], parts["sim"]
        if self.cfg.method != "baseline":       # fbs, fpgm: the method's loss (manidp/methods/)
            loss, parts = self.method.loss(self.net, logits, y, self.cfg)
            return loss, parts["ce"], parts["sparse"], zero
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return ce.mean(), ce.detach(), zero, zero

    def _forward(self, x: torch.Tensor, y: torch.Tensor):
        """Forward, loss, the epoch sums and the gate statistics; returns (loss, logits)."""
        with torch.autocast(self.device.type, enabled=self.cfg.amp, dtype=self.amp_dtype, cache_enabled=False):
            logits = self.net(x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x)
        loss, ce, sparse, sim = self._loss(logits, y)
        b = y.shape[0]
        with torch.no_grad():
            correct = (logits.detach().argmax(1) == y).sum()
            self.sums += torch.stack([ce.sum().double(), sparse.double() * b, sim.double() * b, correct.double()])
            bad = ~torch.isfinite(loss.detach())
            self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self.index, self.first_bad))
            self.index += 1
            if self.gate_stats is not None:
                self.gate_stats.accumulate(self.net)
        return loss, logits

    def _update(self) -> None:
        """Gradient clipping and ``torch.optim.SGD``'s update with a tensor learning rate (no host read)."""
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        with torch.no_grad():
            for group, lr in zip(self.optimizer.param_groups, self.lrs):
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                grads = [p.grad for p in params]
                wd, momentum = group["weight_decay"], group["momentum"]
                if wd:
                    grads = torch._foreach_add(grads, params, alpha=wd)
                if momentum:
                    bufs = [self.optimizer.state[p].get("momentum_buffer") for p in params]
                    if any(b is None for b in bufs):      # the run's first step: SGD starts the buffers at d_p
                        for p, g in zip(params, grads):
                            self.optimizer.state[p]["momentum_buffer"] = g.detach().clone()
                        bufs = [self.optimizer.state[p]["momentum_buffer"] for p in params]
                    else:
                        torch._foreach_mul_(bufs, momentum)
                        torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
                    if group["nesterov"]:
                        grads = torch._foreach_add(grads, bufs, alpha=momentum)
                    else:
                        grads = bufs
                torch._foreach_add_(params, torch._foreach_mul(grads, -lr))
        self.optimizer._opt_called = True     # what SGD.step would mark: the lr scheduler checks it

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss, _ = self._forward(x, y)
        loss.backward()
        self._update()

    # --------------------------------------------------------------------------- modes

    def _eager(self, x, y, probe: bool) -> dict:
        for p in self.params:
            p.grad = None
        loss, logits = self._forward(x, y)
        out = {}
        if probe:
            from .train import _loss_terms
            ref = float(self.reference)
            out = term_grad_norms(_loss_terms(self.net, logits, y, loss, ref, self.cfg), self.net)
        loss.backward()
        self._update()
        self._eager_steps += 1
        return out

    def _structure(self) -> tuple:
        """What a captured graph bakes in besides shapes: FBS's per-gate k (a topk size)."""
        return tuple(getattr(g, "k_static", None) for g in self.net.gates())

    def _replay(self, x, y) -> None:
        key = (x.shape[0], self._structure())
        if key not in self._graphs:
            self._graphs.clear()      # FBS: last epoch's k; its graph's memory goes back
            self._graphs[key] = self._capture(x, y)
        graph, sx, sy = self._graphs[key]
        sx.copy_(x)
        sy.copy_(y)
        graph.replay()

    def _capture(self, x, y):
        """Capture one step on static copies of (x, y); the capture runs nothing, so replay it after."""
        sx, sy = x.clone(), y.clone()
        # the capture must not see a step's tensors freed into its pool: grads start unset, and the
        # captured backward allocates them in the graph's private pool (CUDA graphs docs, whole-network capture)
        for p in self.params:
            p.grad = None
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):     # records the step's kernels, runs none of them
            self._step(sx, sy)
        return g, sx, sy

    def step(self, x: torch.Tensor, y: torch.Tensor, first: bool) -> dict:
        """Run one training step; returns the loss-term probe on an epoch's first step, else {}."""
        for lr, group in zip(self.lrs, self.optimizer.param_groups):
            lr.fill_(group["lr"])
        full = x.shape[0] == self.cfg.batch_size
        mode = self.cfg.step
        if first and self.net.gated:
            out = self._eager(x, y, probe=True)
        elif mode == "eager" or not full:
            out = self._eager(x, y, probe=False)
        elif mode == "compile":
            for p in self.params:
                p.grad = None
            self._compiled(x, y)
            out = {}
        elif self._eager_steps < WARMUP_STEPS:     # before the capture, on a side stream (CUDA graphs docs)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._eager(x, y, probe=False)
            torch.cuda.current_stream().wait_stream(side)
        else:
            self._replay(x, y)
            out = {}
        self.steps += 1
        self.instances += y.shape[0]
        return out

    # --------------------------------------------------------------------------- epochs

    def begin_epoch(self, reference_loss: float | None) -> None:
        self.reference.fill_(reference_loss if reference_loss is not None else 0.0)
        self.sums.zero_()
        self.first_bad.fill_(-1)
        self.index.zero_()
        if self.gate_stats is not None:
            self.gate_stats.reset(self.net)
        for g in self.net.gates():        # FBS: the epoch's k as a plain int, so the step never reads density
            if hasattr(g, "k_static"):
                g.k_static = g.k
        self.steps = self.instances = 0

    def end_epoch(self, epoch: int, ckpt_path) -> dict:
        """The epoch's sums (one read of the device); a non-finite loss is an error here."""
        bad = int(self.first_bad)
        if bad >= 0:
            raise ManidpError(
                f"the loss became non-finite in epoch {epoch + 1}, step {bad + 1}; nothing was written and "
                f"the last good checkpoint ({ckpt_path if ckpt_path.exists() else 'none yet'}) is kept: "
                f"lower --lr or the loss weights (--lambda-sparse, --lambda-sim) and rerun")
        for g in self.net.gates():
            if hasattr(g, "k_static"):
                g.k_static = None
        ce, sparse, sim, correct = self.sums.tolist()
        gates = []
        if self.gate_stats is not None:
            self.gate_stats.n = self.instances     # counted here: a replayed graph runs no Python
            gates = self.gate_stats.summary()
        return {"ce": ce, "sparse": sparse, "sim": sim, "correct": int(correct), "n": self.instances,
                "steps": self.steps, "gates": gates}


def train_epoch(runner: StepRunner, loader, scheduler, epoch: int, reference_loss, ckpt_path, bar) -> dict:
    """One epoch of :class:`StepRunner` steps; the same record as ``train.train_one_epoch``."""
    runner.begin_epoch(reference_loss)
    probe = {}
    for step, (x, y) in enumerate(loader):
        out = runner.step(x, y, first=step == 0)
        if step == 0:
            probe = out
        scheduler.step()
        bar.update(y.numel())
    s = runner.end_epoch(epoch, ckpt_path)
    n = max(s["n"], 1)
    return {"train_ce": s["ce"] / n, "train_top1": 100.0 * s["correct"] / n,
            "train_sparse": s["sparse"] / n, "train_sim": s["sim"] / n, "steps": s["steps"],
            "lr_end": scheduler.get_last_lr()[0], "loss_grad_norms": probe, "gates": s["gates"]}
