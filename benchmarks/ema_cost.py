"""What callbacks=ema adds per validation: the BN recompute of the averaged weights, timed against one training epoch.

    python benchmarks/ema_cost.py [--rounds 5]

On the demo (tiny RepVGG, the embedded digits at 32x32, batch 64): per round, one training epoch (forward + backward +
SGD step over the training split) and one BN recompute (torch's update_bn over ``bn_images`` training images, as
``reparam.ema.EMAWeights`` does), interleaved so that machine noise hits both; prints the ratio per round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.optim.swa_utils import update_bn

from reparam.data import ImageDataModule
from reparam.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bn-images", type=int, default=2048)
    args = parser.parse_args()
    dm = ImageDataModule("digits", "data", num_workers=0, batch_size=64, hflip=False)
    dm.setup()
    model = build_model(
        {
            "arch": "repvgg",
            "variant": None,
            "num_classes": 10,
            "widths": [16, 16, 32, 64, 128],
            "depths": [1, 2, 2, 2, 1],
            "strides": [1, 1, 2, 2, 2],
        }
    )  # model=repvgg_tiny
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    bn_batches = list(dm.calibration_images(args.bn_images, seed=0).split(64))
    train_batches = list(dm.train_dataloader())
    ratios, epochs, recomputes = [], [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        model.train()
        for x, y in train_batches:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        epoch = time.perf_counter() - start
        start = time.perf_counter()
        update_bn(bn_batches, model)
        recompute = time.perf_counter() - start
        epochs.append(epoch), recomputes.append(recompute), ratios.append(recompute / epoch)
    images = sum(len(b) for b in bn_batches)
    print(f"training epoch ({sum(len(b[1]) for b in train_batches)} images): median {statistics.median(epochs):.2f} s")
    print(f"BN recompute ({images} images): median {statistics.median(recomputes):.2f} s")
    print(f"recompute / epoch: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
