import pytest

from conftest import REPO
from kdlab import evaluate


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
