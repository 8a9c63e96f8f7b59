"""Question 3's pruning (kdlab.core.channels over torch-pruning): target sizes, exactness at ratio 0, every criterion
against a deliberately dead channel, iterative pruning, and rebuilding a pruned model from its history."""
import copy

import pytest
import torch
from torch import nn

from kdlab.core import channels, models
from kdlab.core.models import count_params
from kdlab.pipeline.params import PRUNE_CRITERIA, ParamsError


def _teacher(width=0.5):
    torch.manual_seed(0)
    return models.build("resnet20", 1, 3, width).eval()


def _calib(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 12, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def _largest_channel_group(model) -> int:
    """The most parameters one channel index of any prunable group carries (an upper bound for any pruning
    of ``model``, whose groups only get narrower)."""
    import torch_pruning as tp

    x = torch.zeros(2, 1, 12, 12)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    most = 0
    for group in graph.get_all_groups(ignored_layers=linear, root_module_types=[nn.Conv2d]):
        dep = group[0][0]
        copy_ = copy.deepcopy(model)
        g2 = tp.DependencyGraph().build_dependency(copy_, example_inputs=x)
        module = copy_.get_submodule(next(n for n, m in model.named_modules() if m is dep.target.module))
        g2.get_pruning_group(module, dep.handler, idxs=[0]).prune()
        most = max(most, count_params(model) - count_params(copy_))
    return most


def test_pruning_meets_the_target_within_one_channel_group_and_trains():
    teacher = _teacher()
    before = copy.deepcopy(teacher.state_dict())
    target = count_params(teacher) // 4
    pruned, history, ratio = channels.prune_to(teacher, "l1", target, _calib())
    n = count_params(pruned)
    assert n <= target
    assert target - n < _largest_channel_group(teacher)
    assert 0 < ratio < 0.9 and history
    out = pruned.train()(torch.randn(4, 1, 12, 12))
    out.sum().backward()
    assert out.shape == (4, 3) and all(p.grad is not None for p in pruned.parameters())
    after = teacher.state_dict()  # the teacher itself is left as it was
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_ratio_zero_is_the_teacher_exactly():
    teacher = _teacher()
    x = torch.randn(5, 1, 12, 12)
    for model in (channels.prune_at(teacher, "taylor", 0.0, _calib())[0],
                  channels.prune_to(teacher, "l1", count_params(teacher), _calib())[0]):
        assert count_params(model) == count_params(teacher)
        with torch.no_grad():
            assert torch.equal(model.eval()(x), teacher(x))


@pytest.mark.parametrize("criterion", ["l1", "bn_scale", "taylor", "activation"])
def test_each_criterion_prunes_a_dead_channel_first(criterion):
    teacher = _teacher()
    block, c = teacher.layer2[0], 5
    with torch.no_grad():  # channel 5 inside block layer2.0: no weights in, none out, BN gamma and beta 0
        block.conv1.weight[c] = 0
        block.bn1.weight[c] = 0
        block.bn1.bias[c] = 0
        block.conv2.weight[:, c] = 0
    pruned, _, _ = channels.prune_to(teacher, criterion, count_params(teacher) - 1, _calib())
    assert pruned.layer2[0].conv1.out_channels == block.conv1.out_channels - 1   # exactly one channel went
    keep = [i for i in range(block.conv1.out_channels) if i != c]
    assert torch.equal(pruned.layer2[0].conv1.weight, block.conv1.weight[keep])   # and it was channel 5
    assert count_params(teacher) - count_params(pruned) < _largest_channel_group(teacher)


def test_iterative_pruning_reaches_the_target_and_replays_from_its_history():
    teacher = _teacher()
    target = count_params(teacher) // 3
    sizes = []

    def between(model, step):  # where a short distillation runs in the pipeline
        sizes.append(count_params(model))
        with torch.no_grad():
            for p_ in model.parameters():
                p_.mul_(1.01)

    pruned, histories = channels.prune_iteratively(teacher, "activation", target, _calib(), steps=3, between=between)
    assert count_params(pruned) <= target and len(histories) == 3
    assert len(sizes) == 2 and count_params(teacher) > sizes[0] > sizes[1] > count_params(pruned)
    # a fresh model of the teacher's architecture, given the recorded history, takes the pruned weights
    fresh = channels.replay(models.build("resnet20", 1, 3, 0.5), histories, torch.zeros(2, 1, 12, 12))
    fresh.load_state_dict(pruned.state_dict())
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned.eval()(x))
    profile = channels.channel_profile(teacher, pruned)
    assert profile["conv1"][1] == 8 and all(k <= n for k, n in profile.values())
    kept = channels.layer_profile(profile, teacher)
    assert list(kept) == ["stem", "layer1", "layer2", "layer3"] and all(0 < v <= 1 for v in kept.values())


def test_unknown_criterion_and_unreachable_target_name_the_key():
    with pytest.raises(ParamsError) as e:
        channels.importance("l3")
    assert e.value.key == "prune.criterion" and str(e.value).endswith(", ".join(PRUNE_CRITERIA))
    for criterion in PRUNE_CRITERIA:  # what params.yaml accepts, channels builds (and nothing else: above)
        channels.importance(criterion)
    with pytest.raises(ParamsError) as e:
        channels.prune_to(_teacher(), "l1", 10, _calib(), max_ratio=0.5)
    assert e.value.key == "prune.max_ratio"


def test_prune_to_with_a_transform_scores_the_whole_model_and_bisects_on_what_the_transform_keeps():
    """Question 2/3's channels-then-blocks route: channels scored and pruned on the whole teacher, then blocks
    carved out; the bisection counts the carved model, so it meets the target that the carved shape has."""
    from kdlab.core.surgery import keep_blocks

    teacher, keep = _teacher(), [[0], [0], [0]]
    carve = lambda m: keep_blocks(m, keep, "q23.keep")  # noqa: E731
    carved_size = count_params(carve(teacher))
    target = carved_size * 2 // 3
    model, history, ratio = channels.prune_to(teacher, "l1", target, _calib(), transform=carve)
    assert count_params(model) <= target < count_params(carve(channels.prune_at(
        teacher, "l1", ratio - 1 / 512, _calib(), 0.9, 0)[0]))  # a little less pruning is over the target
    assert [len(layer) for layer in (model.layer1, model.layer2, model.layer3)] == [1, 1, 1]
    assert history and 0 < ratio < 0.9
    # the same model as pruning at that ratio and carving afterwards, to the bit
    again = carve(channels.prune_at(teacher, "l1", ratio, _calib(), 0.9, 0)[0])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ParamsError) as e:
        channels.prune_to(teacher, "l1", 10, _calib(), max_ratio=0.5, transform=carve, key="q23.prune.max_ratio")
    assert e.value.key == "q23.prune.max_ratio"
