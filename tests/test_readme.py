import pytest

from conftest import REPO
from kdlab.analysis import readme


@pytest.mark.parametrize("block", readme.README_BLOCKS)
def test_readme_blocks_are_the_pipelines_outputs(block):
    """The README's numbers are the metrics files as `make repro` / `make bench` wrote them (`kdlab readme`)."""
    source = REPO / readme.README_BLOCKS[block]
    if not source.exists():
        pytest.skip(f"no {source} committed yet")
    text = (REPO / "README.md").read_text()
    assert readme.with_block(text, source.read_text(), block) == text, (
        f"README.md's {block} block is not {source}: run `kdlab readme` (make repro does) and commit README.md")


def test_readme_block_replacement():
    start, end = readme.markers("results")
    text = f"a\n{start}\nold\n{end}\nb\n"
    assert readme.with_block(text, "new\n") == f"a\n{start}\nnew\n{end}\nb\n"
    with pytest.raises(ValueError, match="no q23 block"):
        readme.with_block(text, "x", "q23")
