import torch

from kdlab.core import views


def test_view_count_and_identity():
    assert views.num_views(2, True) == 50
    assert views.num_views(2, False) == 25
    assert views.num_views(0, True) == 2
    img = torch.randint(0, 256, (3, 3, 9, 9), dtype=torch.uint8)
    ident = torch.full((3,), views.identity_view(2))
    assert torch.equal(views.render(img, ident, 2), img)


def test_batched_render_equals_reference_for_every_view():
    g = torch.Generator().manual_seed(0)
    pad = 2
    n_views = views.num_views(pad, True)
    images = torch.randint(0, 256, (n_views, 3, 7, 6), dtype=torch.uint8, generator=g)
    ids = torch.randperm(n_views, generator=g)
    batched = views.render(images, ids, pad)
    for i in range(n_views):
        assert torch.equal(batched[i], views.render_one(images[i], int(ids[i]), pad)), f"view {int(ids[i])}"


def test_reference_views_are_shift_and_flip():
    img = torch.arange(16, dtype=torch.uint8).view(1, 4, 4) + 1
    pad, side = 1, 3
    # dy=+1, dx=0, no flip: row y shows source row y+1, the last row is padding
    v = (1 + pad) * side + (0 + pad)
    out = views.render_one(img, v, pad)
    assert torch.equal(out[:, :3], img[:, 1:]) and int(out[:, 3].sum()) == 0
    flipped = views.render_one(img, side * side + views.identity_view(pad), pad)
    assert torch.equal(flipped, img.flip(-1))


def test_all_views_distinct():
    img = torch.randint(1, 256, (1, 1, 8, 8), dtype=torch.uint8)
    n = views.num_views(2, True)
    out = views.render(img.expand(n, -1, -1, -1), torch.arange(n), 2)
    assert len({bytes(o.flatten().tolist()) for o in out}) == n


def test_view_table_is_seeded_and_distinct():
    a = views.view_table(20, 2, True, 4, seed=1)
    b = views.view_table(20, 2, True, 4, seed=1)
    assert a.shape == (20, 4) and torch.equal(a, b)
    assert not torch.equal(a, views.view_table(20, 2, True, 4, seed=2))
    assert all(len(set(row.tolist())) == 4 for row in a)
    assert int(a.max()) < 50 and int(a.min()) >= 0
    full = views.view_table(3, 1, False, "all", 0)
    assert torch.equal(full[2], torch.arange(9, dtype=torch.int16))
