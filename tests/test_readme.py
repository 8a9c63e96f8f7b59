from pathlib import Path

import pytest

from conftest import REPO
from kdlab import evaluate, params


def test_readme_results_are_the_pipelines_summary():
    """The README's numbers are metrics/summary.md as `make repro` wrote it (refresh: `kdlab readme`)."""
    summary = REPO / evaluate.SUMMARY_MD
    if not summary.exists():
        pytest.skip("no metrics/summary.md committed yet")
    readme = (REPO / "README.md").read_text()
    assert evaluate.readme_with_results(readme, summary.read_text()) == readme


def test_readme_block_replacement():
    text = f"a\n{evaluate.README_START}\nold\n{evaluate.README_END}\nb\n"
    assert evaluate.readme_with_results(text, "new\n") == f"a\n{evaluate.README_START}\nnew\n{evaluate.README_END}\nb\n"
    with pytest.raises(ValueError):
        evaluate.readme_with_results("no markers", "x")


def test_summary_statistics_and_table():
    p = params.from_dict({"study": {"seeds": [0, 1], "variants": ["kd"]}})
    runs = {("raw", 0): {"test_acc": 0.80, "agreement": 0.85}, ("raw", 1): {"test_acc": 0.82, "agreement": 0.87},
            ("kd", 0): {"test_acc": 0.84, "agreement": 0.90}, ("kd", 1): {"test_acc": 0.86, "agreement": 0.92}}
    s = evaluate.summarize(p, {"test_acc": 0.9}, runs)
    assert s["variants"]["kd"]["test_acc"]["mean"] == pytest.approx(0.85)
    assert s["variants"]["kd"]["test_acc"]["std"] == pytest.approx(0.0141421356, rel=1e-6)
    assert s["variants"]["kd"]["gain_over_raw"] == pytest.approx(0.04)
    assert "gain_over_raw" not in s["variants"]["raw"]
    md = evaluate.markdown(p, s)
    assert "| Distilled (kd) | resnet8 | 85.00 ± 1.41 | 91.00 ± 1.41 | +4.00 |" in md
    assert "| Trained alone (raw) | resnet8 | 81.00 ± 1.41 |" in md
    assert "| Teacher | resnet20 | 90.00 |" in md
