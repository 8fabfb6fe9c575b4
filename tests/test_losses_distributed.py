"""The loss under two CPU processes (gloo) equals the loss on the whole batch in one process."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lumbarclip.losses import ClipLoss
from _net import free_port


def _batch():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    txt = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    labels = F.one_hot(torch.tensor([0, 1, 1, 0, 1, 1, 1, 0]), 2).float()
    return img, txt, labels


def _worker(rank: int, port: int, kind: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    img, txt, labels = _batch()
    part = slice(4 * rank, 4 * rank + 4)
    local_img = img[part].clone().requires_grad_()
    loss = ClipLoss(kind, form="normalized", gather_with_grad=True)(local_img, txt[part], torch.tensor(10.0), labels[part])
    loss.backward()
    results[rank] = (loss.item(), local_img.grad.clone())
    dist.destroy_process_group()




@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_two_ranks_see_the_global_batch(kind):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), kind, results), nprocs=2, join=True)
    img, txt, labels = _batch()
    img = img.clone().requires_grad_()
    expected = ClipLoss(kind, form="normalized")(img, txt, torch.tensor(10.0), labels)
    expected.backward()
    for rank in (0, 1):
        loss, grad = results[rank]
        assert loss == pytest.approx(expected.item(), rel=1e-5)
        # all_gather's backward sums over ranks, so a rank's local gradient is world_size times
        # the single-process one; DDP's gradient averaging divides it back.
        assert torch.allclose(grad, 2 * img.grad[4 * rank : 4 * rank + 4], atol=1e-5)
