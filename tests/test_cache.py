import torch

from kdlab.core import models, views
from kdlab.core.loader import Normalize, TrainBatches
from kdlab.core.train import autocast
from kdlab.pipeline.cache import teacher_logits_for


def test_cached_logits_equal_recomputed_teacher_logits():
    torch.manual_seed(0)
    teacher = models.build("resnet8", 3, 5, width=0.5).eval()
    images = torch.randint(0, 256, (12, 3, 10, 10), dtype=torch.uint8)
    pad = 2
    table = views.view_table(len(images), pad, True, 4, seed=3)
    norm = Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3], "cpu")
    cached = teacher_logits_for(teacher, images, table, norm, pad, batch_size=7, autocast=autocast(torch.device("cpu")))
    assert cached.shape == (12, 4, 5) and cached.dtype == torch.float16
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        i, k = int(torch.randint(0, 12, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g))
        view = views.render_one(images[i], int(table[i, k]), pad)
        with torch.no_grad():
            expected = teacher(norm(view[None]))[0]
        torch.testing.assert_close(cached[i, k].float(), expected, atol=2e-2, rtol=1e-2)  # fp16 storage


def test_train_batches_carry_the_logits_of_the_views_they_render():
    """The loader hands each image the cached logits of exactly the view it rendered."""
    images = torch.randint(0, 256, (9, 1, 6, 6), dtype=torch.uint8)
    labels = torch.arange(9) % 3
    pad = 1
    table = views.view_table(9, pad, True, 3, seed=0)
    # fake 'logits' that encode (image, view id) so the pairing can be read back
    logits = torch.stack([table.float(), torch.arange(9).float()[:, None].expand(9, 3)], dim=-1)
    norm = Normalize([0.0], [1.0], "cpu")
    batches = TrainBatches(images, labels, norm, 4, pad, table, seed=7, teacher_logits=logits)
    seen = 0
    for epoch in (1, 2):
        for b in batches.epoch(epoch):
            assert torch.equal(b.teacher_logits[:, 0].long(), b.view_ids)
            assert torch.equal(b.teacher_logits[:, 1].long(), b.index)
            for j in range(len(b.labels)):
                expected = views.render_one(images[b.index[j]], int(b.view_ids[j]), pad).float() / 255
                assert torch.equal(b.images[j], expected)
            seen += len(b.labels)
    assert seen == 18
    # the same seed and epoch draw the same views; another epoch draws others
    v1 = torch.cat([b.view_ids for b in batches.epoch(1)])
    assert torch.equal(v1, torch.cat([b.view_ids for b in batches.epoch(1)]))
    assert not torch.equal(v1, torch.cat([b.view_ids for b in batches.epoch(2)]))
