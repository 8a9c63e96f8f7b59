"""``kdlab readme``: the README's numbers are pipeline outputs, copied between markers, never typed by hand."""
from __future__ import annotations

from pathlib import Path

from kdlab.infra import io
from kdlab.pipeline.workspace import BENCH_MD, FINDINGS_MD, SUMMARY_MD

#: question 1 in depth's answers (kdlab.analysis.q1_report.FINDINGS_MD, written by studies/q1's q1_report stage)
Q1_FINDINGS_MD = Path("reports/q1/findings.md")

#: questions 2 and 3 with their controls (kdlab.analysis.q23_report.FINDINGS_MD, written by studies/q23's q23_report stage)
Q23_FINDINGS_MD = Path("reports/q23/findings.md")

#: README blocks that `kdlab readme` fills: name -> the pipeline file copied between its markers
README_BLOCKS = {"findings": FINDINGS_MD, "results": SUMMARY_MD, "bench": BENCH_MD, "q1": Q1_FINDINGS_MD, "q23": Q23_FINDINGS_MD}


def markers(block: str) -> tuple[str, str]:
    return f"<!-- {block}:start (kdlab readme) -->", f"<!-- {block}:end -->"


def with_block(readme: str, content: str, block: str = "results") -> str:
    """README text with the block between ``block``'s markers replaced by ``content``."""
    start_marker, end_marker = markers(block)
    start, end = readme.find(start_marker), readme.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"README has no {block} block ({start_marker} ... {end_marker})")
    return readme[:start + len(start_marker)] + "\n" + content + readme[end:]


def run_readme(readme_path: str = "README.md") -> None:
    text = Path(readme_path).read_text()
    for block, source in README_BLOCKS.items():
        if Path(source).exists():
            text = with_block(text, Path(source).read_text(), block)
            print(f"{readme_path}: {block} block updated from {source}")
    io.save_text(text, readme_path)
