"""The order the loaders read images in: per epoch, per process.

`EpochIndices` is the training order. It is drawn from `seed + epoch` alone (as
DataLoader(shuffle=True) draws it from a generator seeded so: one int64 for the workers' base
seed, then a permutation), so it is the same with or without persistent workers, straight or
resumed; each index comes paired with its epoch, `(epoch, i)`, and the dataset seeds a sample's
augmentation by (seed, epoch, image). With `weights` (the balanced sampler) the epoch is `n`
draws with replacement, each image drawn with probability proportional to its weight.

Under DDP every process draws the same order and takes every `world`-th of it (process `r`:
positions r, r + world, ...), so the shards are disjoint and together the epoch. The order is
padded at its end with its own first indices to a multiple of `world`, so every process takes the
same number of steps (DDP needs it; at most `world - 1` images a second time, as torch's
DistributedSampler does). `EvalShard` shards validation and test the same way without padding,
so each image is counted once in their metrics.

Both are DistributedSamplers so that Lightning keeps them rather than wrapping them in its own;
Lightning calls `set_epoch` before each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class EpochIndices(DistributedSampler):
    """The training order of one process; see the module docstring."""

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int = 0,
        world: int = 1,
        rank: int = 0,
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.n, self.epoch, self.weights = n, epoch, weights

    def order(self, epoch: int) -> list[int]:
        """The whole epoch's order, before sharding (the same in every process)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # DataLoader's draw
        if self.weights is None:
            return torch.randperm(self.n, generator=generator).tolist()
        return torch.multinomial(self.weights, self.n, True, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        order = self.order(epoch)
        order += order[: self.total_size - len(order)]
        return ((epoch, i) for i in order[self.rank : self.total_size : self.num_replicas])


class EvalShard(DistributedSampler):
    """Validation or test images of one process, in order: positions rank, rank + world, ..."""

    def __init__(self, n: int, world: int = 1, rank: int = 0) -> None:
        super().__init__(range(n), num_replicas=world, rank=rank, shuffle=False)
        self.n = n

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-image weights 1 / (its class's count): every class drawn equally often."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()
