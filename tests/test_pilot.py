"""The recipe pilot's rule and table (kdlab.analysis.pilot) on curve files written here: a recipe is adopted only
when every arm's seed SD and every run's second-half drops are within the declared bounds."""
import json

import pytest

from kdlab.analysis.pilot import run_pilot_report, second_half_drops, summarize
from kdlab.infra.schema import ParamsError
from kdlab.pipeline.pilot import recipe_params, run_dir, steps_per_epoch
from kdlab.pipeline.study import Pilot, Recipe


def _write(metrics, name, arm, seed, curve, recipe):
    out = run_dir(metrics, name)
    out.mkdir(parents=True, exist_ok=True)
    stem = "teacher" if arm == "teacher" else f"{arm}-s{seed}"
    record = {"recipe": recipe, "epochs": len(curve), "steps": 10 * len(curve), "arm": arm, "seed": seed,
              "val_curve": curve}
    (out / f"{stem}.curve.json").write_text(json.dumps(record))


def _pilot(tmp_path, finals: dict, wobble: dict) -> Pilot:
    """Per recipe: each arm's final accuracy per seed, and a mid-second-half dip (points) in every run."""
    recipes = {name: Recipe(lr=0.1) for name in finals}
    pilot = Pilot(seeds=[0, 1, 2], epochs=6, arms=["raw", "kd"], max_sd=0.35, max_drop=5.0, recipes=recipes)
    for name, arms in finals.items():
        r = {"lr": 0.1, "schedule": "cosine", "warmup": 0.05, "batch_size": 125, "ema": 0.0, "views": 4}
        _write(tmp_path, name, "teacher", 0, [0.5, 0.7, 0.8, 0.85, 0.86, 0.87], r)
        for arm, values in arms.items():
            for seed, v in enumerate(values):
                dip = wobble[name] / 100
                _write(tmp_path, name, arm, seed, [0.4, 0.6, 0.7, v / 100 - 0.01, v / 100 - dip, v / 100], r)
    return pilot


def test_second_half_drops_are_in_points_and_skip_the_first_half():
    assert second_half_drops([0.1, 0.9, 0.2, 0.8, 0.7, 0.75]) == pytest.approx([-60.0, 10.0, -5.0])
    assert second_half_drops([0.5]) == []


def test_the_rule_adopts_the_best_recipe_within_both_bounds(tmp_path):
    finals = {"steady": {"raw": [88.0, 88.2, 88.1], "kd": [89.0, 89.1, 88.9]},       # SD 0.1, dips 1 point
              "noisy": {"raw": [87.0, 89.0, 88.0], "kd": [90.0, 90.2, 90.1]},        # raw SD 1.0: out
              "jumpy": {"raw": [89.0, 89.1, 89.2], "kd": [90.0, 90.1, 90.2]}}        # dips 8 points: out
    pilot = _pilot(tmp_path, finals, {"steady": 1.0, "noisy": 1.0, "jumpy": 8.0})
    s = summarize(pilot, tmp_path)
    assert [n for n, r in s["recipes"].items() if r["qualifies"]] == ["steady"] and s["adopted"] == "steady"
    assert s["recipes"]["noisy"]["arms"]["raw"]["sd"] == pytest.approx(1.0)
    assert s["recipes"]["jumpy"]["max_drop"] == pytest.approx(8.0 - 1.0)
    assert s["recipes"]["steady"]["arms"]["kd"]["paired_sd_vs_raw"] == pytest.approx(0.1)
    out = run_pilot_report(pilot, tmp_path, tmp_path / "pilot.json", tmp_path / "pilot.md", "q1", 5000)
    assert out["adopted"] == "steady"
    saved = json.loads((tmp_path / "pilot.json").read_text())
    assert saved["power"]["sd"] == pytest.approx(0.1)  # the adopted recipe's paired SD sizes the seeds
    assert saved["power"]["seeds_needed"]["0.5"]["1"] <= saved["power"]["seeds_needed"]["0.5"]["8"]
    assert "**Adopted: `steady`.**" in (tmp_path / "pilot.md").read_text()


def test_no_recipe_qualifies_then_none_is_adopted_and_no_seeds_are_planned(tmp_path):
    pilot = _pilot(tmp_path, {"noisy": {"raw": [87.0, 89.0, 88.0], "kd": [90.0, 90.2, 90.1]}}, {"noisy": 0.0})
    out = run_pilot_report(pilot, tmp_path, tmp_path / "pilot.json", tmp_path / "pilot.md", "q1", 5000)
    assert out["adopted"] is None and json.loads((tmp_path / "pilot.json").read_text())["power"] is None
    assert "No recipe qualifies" in (tmp_path / "pilot.md").read_text()


def test_a_recipe_sets_train_and_cache_views_and_counts_its_steps():
    from kdlab.pipeline import params

    p = params.from_dict({})
    r = Recipe(lr=0.05, schedule="cosine", warmup=0.05, batch_size=125, ema=0.99, views="all")
    pr = recipe_params(p, r)
    assert (pr.train.schedule, pr.train.warmup, pr.train.batch_size, pr.train.ema, pr.cache.views) == \
        ("cosine", 0.05, 125, 0.99, "all")
    assert pr.train.momentum == p.train.momentum and pr.loss == p.loss
    assert steps_per_epoch(5000, r) == 40 and steps_per_epoch(5000, Recipe(batch_size=128)) == 40


def test_bad_pilot_params_are_refused_naming_the_key():
    with pytest.raises(ParamsError, match="q1.pilot.seeds"):
        Pilot(seeds=[0], recipes={"a": Recipe()}).check("q1.pilot")
    with pytest.raises(ParamsError, match="q1.pilot.recipes.a.ema"):
        Pilot(seeds=[0, 1], recipes={"a": Recipe(ema=1.0)}).check("q1.pilot")
    with pytest.raises(ParamsError, match="q1.pilot.arms"):
        Pilot(seeds=[0, 1], arms=["raw", "fitnet"], recipes={"a": Recipe()}).check("q1.pilot")


def test_a_study_file_is_read_for_its_pilot_alone(tmp_path):
    """kdlab pilot reads a named study's pilot (with its own teacher and student) and subset, and nothing of the
    study's design or modules; a file without a pilot, or with a bad pilot architecture, is refused naming the key."""
    import yaml

    from kdlab.pipeline.pilot import load

    sec = {"train_images": 300, "subset_seed": 2, "teacher": "not the pilot's",
           "teachers": {"t": {"arch": "resnet8", "width": 1.0, "epochs": 9, "lr": 0.3, "seed": 7, "snapshots": []}},
           "student": {"arch": "resnet8", "width": 1.0, "lr": 0.3}, "anything": "the study's own",
           "pilot": {"teacher": {"arch": "resnet14", "width": 0.5, "seed": 4}, "student": {"arch": "resnet8", "width": 0.25},
                     "seeds": [0, 1], "epochs": 3, "recipes": {"r": {"lr": 0.05, "views": "all"}}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"qx": sec}))
    s = load(path)
    assert (s.name, s.teacher.arch, s.teacher.width, s.teacher.seed, s.student.width) == ("qx", "resnet14", 0.5, 4, 0.25)
    assert s.teacher.epochs == s.student.epochs == 3
    assert s.pilot.recipes["r"].views == "all" and str(s.report) == "reports/qx/pilot.md"
    assert "qx.pilot.recipes.r.lr" in s.logged() and "qx.pilot.teacher.arch" in s.logged()
    assert not any(k.startswith(("qx.anything", "qx.teachers", "qx.student")) for k in s.logged())
    path.write_text(yaml.safe_dump({"qx": {**sec, "pilot": {**sec["pilot"], "teacher": {"arch": "resnet99"}}}}))
    with pytest.raises(ParamsError, match="qx.pilot.teacher.arch"):
        load(path)
    path.write_text(yaml.safe_dump({"qx": {**sec, "pilot": {**sec["pilot"], "student": {"arch": "resnet8", "width": 0}}}}))
    with pytest.raises(ParamsError, match="qx.pilot.student.width"):
        load(path)
    path.write_text(yaml.safe_dump({"qx": {k: v for k, v in sec.items() if k != "pilot"}}))
    with pytest.raises(ParamsError, match="qx.pilot"):
        load(path)
