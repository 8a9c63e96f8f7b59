import pytest

from conftest import REPO
from kdlab.analysis import readme


@pytest.mark.parametrize("block", readme.BLOCKS)
def test_result_blocks_are_the_pipelines_outputs(block):
    """The numbers in README.md and docs/ are the files `make repro` / `make q1` / `make q23` / `make bench`
    wrote (`kdlab readme`)."""
    page, source = readme.BLOCKS[block]
    if not (REPO / source).exists():
        pytest.skip(f"no {source} committed yet")
    text = (REPO / page).read_text()
    assert readme.with_block(text, (REPO / source).read_text(), block) == text, (
        f"{page}'s {block} block is not {source}: run `kdlab readme` (make repro does) and commit {page}")


def test_block_replacement_and_what_kdlab_readme_says(tmp_path, capsys):
    start, end = readme.markers("results")
    text = f"a\n{start}\nold\n{end}\nb\n"
    assert readme.with_block(text, "new\n", "results") == f"a\n{start}\nnew\n{end}\nb\n"
    with pytest.raises(ValueError, match="no q23 block"):
        readme.with_block(text, "x", "q23")
    # a page whose block already holds its source is left alone and said to be unchanged; a stale one is updated
    page, source = readme.BLOCKS["bench"]
    (tmp_path / page).parent.mkdir(parents=True)
    (tmp_path / source).parent.mkdir(parents=True)
    start, end = readme.markers("bench")
    (tmp_path / source).write_text("fresh\n")
    (tmp_path / page).write_text(f"{start}\nstale\n{end}\n")
    readme.run_readme(tmp_path)
    assert (tmp_path / page).read_text() == f"{start}\nfresh\n{end}\n"
    readme.run_readme(tmp_path)
    out = capsys.readouterr().out
    assert f"{page}: bench block updated from {source}" in out and f"{page}: bench block unchanged" in out
    assert "findings block left as it is" in out


def test_dvc_metrics_show_fits_a_terminal():
    """`dvc metrics show` of the committed studies: at most 40 values a study, 120 in all, and no timings."""
    import json
    import re
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    files = next(iter(json.loads(res.stdout).values()))["data"]

    def leaves(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from leaves(v, f"{key}.{k}" if key else k)
        else:
            yield key, node

    counts = {}
    for name, entry in files.items():
        values = dict(leaves(entry["data"]))
        counts[name] = len(values)
        timed = [k for k in values if re.search(r"second|time|wall|elapsed", k, re.I)]
        assert not timed, f"{name} holds timings: {timed}"
    assert set(counts) == {"metrics/headline.json", "metrics/q1/headline.json", "metrics/q23/headline.json"}, counts
    assert max(counts.values()) <= 40 and sum(counts.values()) <= 120, counts
