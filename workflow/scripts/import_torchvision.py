"""Rule import_torchvision: torchvision's weights, sha256-verified, as a manidp checkpoint
(manidp.pretrained)."""
from manidp.pretrained import find_weights, import_weights
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    arch = sm.wildcards.arch
    path, digest = find_weights(arch, sm.params.weights, sm.params.hub_dir, key=sm.params.key)
    import_weights(arch, path, sm.output[0], sha256=digest)
    print(f"{arch}: {path} (sha256 {digest[:16]}...) -> {sm.output[0]}")


run(main, sm.log[0])
