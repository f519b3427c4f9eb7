"""weights_sha256 hashes every state_dict entry, 0-dim ones included (a BN's num_batches_tracked).

A fused model of a family whose stem keeps a conv + BN outside blocks crashed deploy.py and serve.py here
(``self.dim() cannot be 0 to view Long as Byte``) after report.json was written.
"""

import hashlib

import torch
from torch import nn

from reparam.deploy.report_index import weights_sha256


def test_a_model_with_batchnorm_hashes_and_the_hash_follows_the_weights() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    first = weights_sha256(model)
    assert first == weights_sha256(model)
    with torch.no_grad():
        model[1].num_batches_tracked += 1
    assert weights_sha256(model) != first
    with torch.no_grad():
        model[1].num_batches_tracked -= 1
        model[0].weight[0, 0, 0, 0] += 1e-3
    assert weights_sha256(model) != first


def test_the_hash_of_a_model_without_0_dim_tensors_is_the_one_recorded_before() -> None:
    """report_index.json entries written by earlier versions still match (the bytes hashed are the same)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    assert weights_sha256(model) == digest.hexdigest()
