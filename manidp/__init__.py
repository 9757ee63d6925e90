"""manidp: Manifold Regularized Dynamic Network Pruning (Tang et al., CVPR 2021), reproducibly.

Modules, bottom to top: ``models`` (plain and gated ResNets), ``macs`` (exact MAC counts),
``schedule`` (remain rate, thresholds), ``losses``, ``data``, ``train``, ``evaluate``, ``cli``.
"""
__version__ = "0.1.0"
