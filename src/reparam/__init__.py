"""reparam: train multi-branch networks, fuse them into single convs exactly, ship them.

The fusion core (this namespace) imports neither Lightning nor Hydra.
"""

from .autofuse import AutoFuseError, FuseReport, auto_fuse
from .blocks import (
    BLOCKS,
    ACBlock,
    ConvBN,
    DiverseBranchBlock,
    FormMismatchError,
    LinearAddBlock,
    MobileOneBlock,
    MultiBranchBlock,
    QARepVGGBlock,
    RepVGGBlock,
    make_block,
    register_block,
)
from .compare import Comparison, ComparisonReport, Tolerance, compare
from .convert import (
    EquivalenceError,
    EquivalenceReport,
    first_differing_block,
    reparameterize_model,
    verify_equivalence,
)
from .fusion import (
    avgpool_kernel,
    bn_statistics,
    compose_1x1_kxk,
    compose_kxk_1x1,
    fold_bn,
    identity_kernel,
    pad_kernel,
    regroup_kernel,
    scale_kernel,
    sum_branches,
)

__version__ = "0.2.0"

__all__ = [
    "BLOCKS",
    "ACBlock",
    "Comparison",
    "ComparisonReport",
    "ConvBN",
    "DiverseBranchBlock",
    "EquivalenceError",
    "AutoFuseError",
    "EquivalenceReport",
    "FormMismatchError",
    "FuseReport",
    "LinearAddBlock",
    "MobileOneBlock",
    "MultiBranchBlock",
    "QARepVGGBlock",
    "RepVGGBlock",
    "Tolerance",
    "auto_fuse",
    "avgpool_kernel",
    "bn_statistics",
    "compare",
    "compose_1x1_kxk",
    "compose_kxk_1x1",
    "fold_bn",
    "identity_kernel",
    "make_block",
    "pad_kernel",
    "regroup_kernel",
    "register_block",
    "reparameterize_model",
    "scale_kernel",
    "sum_branches",
    "verify_equivalence",
    "first_differing_block",
]
