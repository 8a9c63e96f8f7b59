"""The one training path (kdlab.pipeline.train) on its own: what a run reads follows from its spec and its
method, in every study alike. Every study's runs end to end are tests/test_pipeline.py's."""
from pathlib import Path

import pytest
import torch

from conftest import tiny
from kdlab import distill
from kdlab.core.loader import Normalize
from kdlab.infra import io
from kdlab.pipeline import params, train, workspace
from kdlab.pipeline.spec import RunSpec, Source, Subset


def _ctx(n=12):
    g = torch.Generator().manual_seed(0)
    split = {"images": torch.randint(0, 255, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
             "labels": torch.arange(n) % 3}
    return workspace.Context(torch.device("cpu"), {"channels": 1, "classes": 3, "sha256": "d"},
                             {"train": split, "val": split, "test": split}, Normalize([0.5], [0.25], torch.device("cpu")))


def _spec(tmp_path, method="kd", **kw):
    return RunSpec("r", "student", params.ModelParams("resnet8", 0.25), 0, (tmp_path / "m.pt", tmp_path / "m.json"),
                   method, **kw)


def _cache(p, ctx, path, subset=None, **extra):
    table = train.views.view_table(len(ctx.splits["train"]["labels"]), p.views.pad, p.views.flip, p.cache.views,
                                   p.cache.seed)
    logits = torch.randn(*table.shape, 3).half()
    io.save_torch({"view_ids": table, "logits": logits, **extra, "teacher_sha256": "t",
                   **workspace.cache_stamp(p, subset)}, path)
    return table, logits


def test_a_method_that_draws_fresh_views_gets_them_in_a_named_study_too(tmp_path):
    """kd_online's views are "all"; question 1's and 2/3's own student code once ignored that (issue 27)."""
    from kdlab import distill

    p, ctx = params.from_dict(tiny()), _ctx()
    online = distill.build("kd_online", p)
    for subset in (None, Subset(12, 12)):
        b = train._batches(p, _spec(tmp_path, "kd_online", subset=subset), ctx, online, {})
        assert b.view_table.shape[1] == train.views.num_views(p.views.pad, p.views.flip)
        assert b.teacher_logits is None


def test_a_logits_method_reads_the_named_cache_and_its_clean_correctness(tmp_path):
    from kdlab import distill

    p, ctx = params.from_dict(tiny()), _ctx()
    subset = Subset(12, 12)
    clean = torch.arange(12) % 2 == 0
    table, logits = _cache(p, ctx, tmp_path / "c.pt", subset, clean_correct=clean)
    key = {}
    method = distill.build("kd_correct_clean", p)
    b = train._batches(p, _spec(tmp_path, "kd_correct_clean", cache=Source(tmp_path / "c.pt", "dvc repro x"),
                                subset=subset), ctx, method, key)
    assert torch.equal(b.view_table, table.long()) and torch.equal(b.teacher_logits, logits)
    assert torch.equal(method.clean_correct, clean) and key == {"cache_sha256": io.sha256(tmp_path / "c.pt")}
    raw = distill.build("raw", p)  # labels only: the cached views, never the cache itself
    b = train._batches(p, _spec(tmp_path, "raw", subset=subset), ctx, raw, {})
    assert torch.equal(b.view_table, table.long()) and b.teacher_logits is None


def test_a_cache_of_another_subset_or_teacher_is_refused(tmp_path):
    p, ctx = params.from_dict(tiny()), _ctx()
    _cache(p, ctx, tmp_path / "c.pt", Subset(12, 12))
    with pytest.raises(io.StageError, match=r"built with .*'images': 12.*'images': 10.*dvc repro x"):
        workspace.read_cache(p, tmp_path / "c.pt", "dvc repro x", None, Subset(10, 12))
    (tmp_path / "teacher.pt").write_bytes(b"another teacher")
    with pytest.raises(io.StageError, match="not built from the current .*teacher.pt.*dvc repro x"):
        workspace.read_cache(p, tmp_path / "c.pt", "dvc repro x", tmp_path / "teacher.pt", Subset(12, 12))
    assert workspace.read_cache(p, tmp_path / "c.pt", "dvc repro x", tmp_path / "absent.pt", Subset(12, 12))


def test_inits_that_conflict_or_lack_their_source_are_refused(tmp_path):
    from kdlab import distill

    p, ctx = params.from_dict(tiny()), _ctx()
    with pytest.raises(io.StageError, match="init 'sideways' \\(allowed: random, carved, pruned, shape"):
        train._initial_model(_spec(tmp_path, init="sideways"), distill.build("kd", p), ctx, None, None, {})
    with pytest.raises(io.StageError, match="init 'pruned'.*need the pruned model's file"):
        train._initial_model(_spec(tmp_path, init="pruned"), distill.build("kd", p), ctx, None, None, {})
    with pytest.raises(io.StageError, match="needs the teacher, and the run names none"):
        train._teacher(_spec(tmp_path, init="carved"), ctx, {})


def test_every_training_stage_names_a_run_of_its_study_and_every_run_has_its_stage():
    """`kdlab train RUN` in the three dvc.yaml files, as DVC renders them from the shipped params, against the
    runs each study's params define (kdlab.cli.study_runs): the same sets, both ways. And each path is named once:
    a stage's outs are exactly the files its run's spec writes (model file, or the teacher's folder with its
    snapshots; metrics file; validation curve), and every file the spec reads is one of its deps or under one."""
    import shlex

    from dvc.repo import Repo

    from conftest import REPO
    from kdlab import cli

    p = params.load(REPO / "params.yaml")
    repo = Repo(str(REPO))
    for pipeline, study in (("dvc.yaml", None), ("studies/q1/dvc.yaml", "studies/q1/params.yaml"),
                            ("studies/q23/dvc.yaml", "studies/q23/params.yaml")):
        cmds = [shlex.split(s.cmd) for s in repo.stage.collect(str(REPO / pipeline)) if s.cmd.startswith("kdlab train")]
        assert all(c[2:4] == ["--study", study] for c in cmds) if study else all(len(c) == 3 for c in cmds)
        runs = cli.study_runs(p, study and str(REPO / study))
        assert sorted(c[-1] for c in cmds) == sorted(runs), pipeline
        for stage in repo.stage.collect(str(REPO / pipeline)):
            if not stage.cmd.startswith("kdlab train"):
                continue
            spec = runs[shlex.split(stage.cmd)[-1]]()
            model = spec.snapshot_dir if spec.snapshot_dir and spec.snapshot_as_model else spec.files[0]
            written = {model, spec.files[1], *([spec.curve] if spec.curve else [])}
            assert {str(o.def_path) for o in stage.outs} == {str(f) for f in written}, stage.name
            deps = [Path(str(d.def_path)) for d in stage.deps]
            method = distill.method_class(spec.method)
            read = [spec.teacher if method.uses_teacher_model or spec.init == "carved" else None,
                    spec.cache if method.uses_teacher_logits else None,
                    spec.pruned if spec.init in ("pruned", "shape") else None]
            for source in filter(None, read):
                assert any(source.path == d or d in source.path.parents for d in deps), (stage.name, source)


def test_an_unknown_run_is_refused_with_the_studys_runs(in_tmp, capsys):
    from conftest import REPO, shipped_with
    from kdlab import cli

    (in_tmp / "params.yaml").write_text(__import__("yaml").safe_dump(shipped_with({})))
    assert cli.main(["train", "students/kd-99"]) == 2
    err = capsys.readouterr().err
    # the study's runs counted from the shipped params (7 seeds of raw, kd, kd_correct_only), the nearest names offered
    assert "no run 'students/kd-99' in the default study (22 runs: 1 teacher, 21 students/...)" in err
    assert "the closest: students/kd-" in err
    q1 = str(REPO / "studies/q1/params.yaml")  # the run after --study, as dvc.yaml writes it
    assert cli.main(["train", "--study", q1, "students/kd.main-w0.5-e31-s0"]) == 2
    assert "the closest: students/kd.main-w0.5-e30-s0" in capsys.readouterr().err
    assert cli.main(["cache", "students/kd-0"]) == 2
    assert "no other command takes one" in capsys.readouterr().err
    assert not (in_tmp / "models").exists()
