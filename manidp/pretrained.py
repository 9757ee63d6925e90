"""torchvision's ImageNet ResNet-18/34 weights as dense baselines, verified before use.

torchvision names each weight file ``<name>-<hash>.pth`` where ``<hash>`` is the first hex digits
of the file's sha256 (``torch.hub.download_url_to_file(..., hash_prefix=...)`` checks the same
thing). :func:`find_weights` takes the file from a configured path or from the torch hub cache
(``~/.cache/torch/hub/checkpoints/`` unless ``$TORCH_HOME`` says otherwise) and verifies it;
:func:`import_weights` turns it into a self-describing manidp checkpoint (dense, 1000 classes,
224 px) that ``manidp evaluate`` and ``manidp prune --baseline`` read.

Nothing here downloads: machines without internet must be given the file.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .errors import ManidpError

# arch -> torchvision's file name (IMAGENET1K_V1 weights: top-1/top-5 69.758/89.078 and 73.314/91.420)
TORCHVISION_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth"}
TORCHVISION_ACCURACY = {"resnet18": (69.758, 89.078), "resnet34": (73.314, 91.420)}
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")


def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/...``)."""
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints"


def hash_prefix_in_name(path: str | Path) -> str | None:
    """The sha256 prefix a torchvision-style file name carries (``resnet18-f37072fd.pth`` -> ``f37072fd``)."""
    m = _HASH_IN_NAME.search(Path(path).name)
    return m.group(1) if m else None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256_prefix(path: str | Path, expected: str | None = None) -> str:
    """Check that the sha256 of ``path`` starts with ``expected`` (default: the prefix in its name).

    Returns the full digest; raises :class:`ManidpError` (one line) on a mismatch.
    """
    path = Path(path)
    expected = (expected or hash_prefix_in_name(path) or "").lower()
    if not expected:
        raise ManidpError(f"{path}: the file name carries no sha256 prefix (like resnet18-f37072fd.pth) "
                          f"and none was given, so the weights cannot be verified")
    digest = file_sha256(path)
    if not digest.startswith(expected):
        raise ManidpError(f"{path}: sha256 starts with {digest[:len(expected)]}, expected {expected}; the "
                          f"file is truncated, corrupt or not the expected weights: download it again")
    return digest


def find_weights(arch: str, weights: str | Path | None = None, hub_dir: str | Path | None = None,
                 key: str = "the weights path") -> tuple[Path, str]:
    """Locate and verify torchvision's ``arch`` weights; return ``(path, sha256)``.

    ``weights``: a configured file (verified against the prefix in its name, or torchvision's when
    the name has none); otherwise ``hub_dir`` (default: torch hub's checkpoint folder) must hold
    torchvision's file. ``key`` names the setting to change in error messages.
    """
    if arch not in TORCHVISION_FILES:
        raise ManidpError(f"torchvision has no ImageNet weights for '{arch}' here: use one of "
                          f"{', '.join(TORCHVISION_FILES)}, or train the baseline")
    name = TORCHVISION_FILES[arch]
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ManidpError(f"{key}: {path} does not exist; point {key} at torchvision's {name}")
    else:
        folder = Path(hub_dir).expanduser() if hub_dir else hub_checkpoint_dir()
        path = folder / name
        if not path.is_file():
            raise ManidpError(f"{path} does not exist: copy torchvision's {name} there, or set {key} "
                              f"to the file, or train the ImageNet baselines instead (imagenet_baseline.source: train)")
    expected = hash_prefix_in_name(path) or hash_prefix_in_name(name)
    return path, verify_sha256_prefix(path, expected)


def import_weights(arch: str, src: str | Path, out: str | Path, sha256: str | None = None) -> Path:
    """Write torchvision's ``arch`` state dict ``src`` as a manidp checkpoint at ``out``."""
    from . import checkpoint as ckpt_io
    from .models import build_model, load_dense_state_dict
    state = ckpt_io.load(src)["model"]
    model = build_model(arch, num_classes=1000, gated=False)
    load_dense_state_dict(model, state, source=f"weights {src}")
    top1, top5 = TORCHVISION_ACCURACY.get(arch, (None, None))
    config = {"method": "baseline", "arch": arch, "dataset": "imagenet", "source": "torchvision",
              "weights": str(src), "sha256": sha256, "seed": None,
              "published_top1": top1, "published_top5": top5}
    return ckpt_io.save(out, arch=arch, gated=False, num_classes=model.num_classes,
                        input_size=model.input_size, model=model.state_dict(), epoch=0,
                        thresholds=None, config=config, metrics=[])
