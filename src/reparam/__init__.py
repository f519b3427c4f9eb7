"""reparam: train multi-branch RepVGG-style networks, fuse them into single convs exactly, ship them.

The fusion core (this namespace) imports neither Lightning nor Hydra.
"""

from .blocks import ConvBN, FormMismatchError, RepVGGBlock
from .convert import EquivalenceError, EquivalenceReport, reparameterize_model, verify_equivalence
from .fusion import bn_statistics, fold_bn, identity_kernel, pad_kernel, sum_branches

__version__ = "0.1.0"

__all__ = [
    "ConvBN",
    "EquivalenceError",
    "EquivalenceReport",
    "FormMismatchError",
    "RepVGGBlock",
    "bn_statistics",
    "fold_bn",
    "identity_kernel",
    "pad_kernel",
    "reparameterize_model",
    "sum_branches",
    "verify_equivalence",
]
