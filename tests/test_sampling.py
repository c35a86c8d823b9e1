"""The loaders' order: the same as a shuffling DataLoader in one process, disjoint and complete
shards under DDP, a balanced sampler that draws each class equally often."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from leafnet.data.sampling import EpochIndices, EvalShard, balanced_weights


@pytest.mark.parametrize("epoch", [0, 3])
def test_one_process_reads_what_a_shuffling_dataloader_reads(epoch: int) -> None:
    generator = torch.Generator().manual_seed(42 + epoch)
    loader = DataLoader(range(50), batch_size=None, shuffle=True, generator=generator)
    expected = [int(i) for i in loader]
    assert list(EpochIndices(50, 42, epoch)) == [(epoch, i) for i in expected]


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("n", [12, 13, 210, 211])
def test_training_shards_are_the_epoch_split_between_processes(world: int, n: int) -> None:
    shards = [[i for _, i in EpochIndices(n, 7, 2, world, rank)] for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # every process takes as many steps
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))  # together: every image of the epoch
    assert len(flat) - n == (-n) % world  # and at most world - 1 read twice, to even the shards
    assert len(set(flat)) == n
    whole = EpochIndices(n, 7, 2).order(2)
    assert shards[0][0] == whole[0] and shards[-1][0] == whole[world - 1]  # the same order


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_shards_count_each_image_once(world: int) -> None:
    shards = [list(EvalShard(23, world, rank)) for rank in range(world)]
    assert [len(EvalShard(23, world, r)) for r in range(world)] == [len(s) for s in shards]
    assert sorted(i for s in shards for i in s) == list(range(23))


def test_each_epoch_has_its_own_order_and_the_same_one_again_on_resume() -> None:
    first, again = EpochIndices(40, 1), EpochIndices(40, 1)
    first.set_epoch(5)
    again.set_epoch(5)
    assert list(first) == list(again)
    again.set_epoch(6)
    assert [i for _, i in again] != [i for _, i in first]


def test_the_balanced_sampler_draws_each_class_equally_often() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    sampler = EpochIndices(100, 0, weights=balanced_weights(labels))
    drawn = []
    for epoch in range(30):
        sampler.set_epoch(epoch)
        drawn += [i for _, i in sampler]
    share = float((labels[drawn] == 1).float().mean())
    assert 0.45 < share < 0.55  # 3,000 draws; a plain shuffle gives 0.10
    assert len(drawn) == 3000
