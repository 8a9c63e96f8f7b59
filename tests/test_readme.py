import pytest

from conftest import REPO
from kdlab import evaluate


@pytest.mark.parametrize("block", evaluate.README_BLOCKS)
def test_readme_results_are_the_pipelines_summary(block):
    """The README's numbers are the metrics files as `make repro` wrote them (refresh: `kdlab readme`)."""
    summary = REPO / evaluate.README_BLOCKS[block]
    if not summary.exists():
        pytest.skip(f"no {summary} committed yet")
    readme = (REPO / "README.md").read_text()
    assert evaluate.readme_with_results(readme, summary.read_text(), block) == readme


def test_readme_block_replacement():
    text = f"a\n{evaluate.README_START}\nold\n{evaluate.README_END}\nb\n"
    assert evaluate.readme_with_results(text, "new\n") == f"a\n{evaluate.README_START}\nnew\n{evaluate.README_END}\nb\n"
    with pytest.raises(ValueError):
        evaluate.readme_with_results("no markers", "x")
