import torch

from etj_workload import data


def test_digits_split_is_stratified_and_scaled() -> None:
    d = data.digits()
    assert len(d.train_x) + len(d.test_x) == 1797 and d.train_x.shape[1] == 64
    assert float(d.train_x.max()) <= 1.0 and set(d.test_y.tolist()) == set(range(10))


def test_batches_shard_an_epoch_and_skip_reproduces_the_tail() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    shards = [list(data.batches(x, y, batch_size=2, epoch=3, rank=r, world_size=2)) for r in range(2)]
    seen = torch.cat([b[1] for s in shards for b in s])
    assert sorted(seen.tolist()) == list(range(10))
    assert len(shards[0]) == data.steps_per_epoch(10, 2, 2) == 3
    tail = list(data.batches(x, y, batch_size=2, epoch=3, rank=0, world_size=2, skip=1))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(tail, shards[0][1:], strict=True))
    other_epoch = list(data.batches(x, y, batch_size=2, epoch=4, rank=0, world_size=2))
    assert [b[1].tolist() for b in other_epoch] != [b[1].tolist() for b in shards[0]]
