"""Torch datasets over ``Sample`` records, through detector's one preprocessing function.

Training draws one random tile per image after a sampled flip and degradation chain
(augmentation; the tile-level options, frequency masking and shuffled squares, come after
the tile is cut); evaluation returns the inference grid of tiles, exactly what the server will
feed the model, and ``collate_tiles`` keeps track of which tiles belong to which image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from detector.preprocess import PreprocessConfig, preprocess
from training.datasets import Sample, read_pixels
from training.degrade import AugmentPolicy, apply_chain

__all__ = ["EvalDataset", "TrainDataset", "collate_tiles"]


class TrainDataset(Dataset):
    """One random tile per image (or ``tiles`` of them, stacked), after a sampled flip and
    degradation chain applied to the whole image; then, where the policy sets them, each
    tile's frequency mask and its shuffled squares.

    The random stream of item ``i`` in epoch ``e`` is seeded by (seed, e, i), so a run is
    reproducible whatever the number of loader workers.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        config: PreprocessConfig,
        augment: AugmentPolicy | None = None,
        seed: int = 0,
        tiles: int = 1,
    ) -> None:
        self.samples = list(samples)
        self.config = config
        self.augment = augment
        self.seed = seed
        self.tiles = tiles
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pixels = read_pixels(sample.path)
        if self.augment is not None:
            pixels = self.augment.flip(pixels, rng)
            pixels = apply_chain(pixels, self.augment.sample(rng), rng)
        tiles = []
        for _ in range(self.tiles):
            tile = preprocess(pixels, self.config, rng)[0]
            if self.augment is not None:
                tile = self.augment.shuffle(self.augment.freqmask(tile, rng), rng)
            tiles.append(tile)
        x = tiles[0] if self.tiles == 1 else np.stack(tiles)  # (C, H, W) or (k, C, H, W)
        return torch.from_numpy(x), torch.tensor(float(sample.label))


class EvalDataset(Dataset):
    """The inference tile grid of each image (a variable number of tiles per image)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        config: PreprocessConfig,
        transform=None,
    ) -> None:
        self.samples = list(samples)
        self.config = config
        self.transform = transform  # e.g. a degradation chain for robustness evaluation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = read_pixels(self.samples[index].path)
        if self.transform is not None:
            pixels = self.transform(pixels)
        return torch.from_numpy(preprocess(pixels, self.config)), index


def collate_tiles(
    batch: list[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """-> (all tiles stacked, image position of each tile, dataset indices of the images)."""
    tiles = torch.cat([t for t, _ in batch])
    owner = torch.cat(
        [torch.full((len(t),), i, dtype=torch.long) for i, (t, _) in enumerate(batch)]
    )
    return tiles, owner, [idx for _, idx in batch]
