"""``kdlab readme``: the numbers in README.md and docs/ are pipeline outputs, copied between markers, never typed by
hand."""
from __future__ import annotations

from pathlib import Path

from kdlab.infra import io
from kdlab.pipeline.workspace import BENCH_MD, FINDINGS_MD, TABLE_MD

#: question 1 in depth's answers (kdlab.analysis.q1_report: findings.md in full, brief.md for the README), written
#: by studies/q1's q1_report stage; questions 2 and 3 with their controls likewise (studies/q23's q23_report)
Q1_FINDINGS_MD, Q1_BRIEF_MD = Path("reports/q1/findings.md"), Path("reports/q1/brief.md")
Q23_FINDINGS_MD, Q23_BRIEF_MD = Path("reports/q23/findings.md"), Path("reports/q23/brief.md")

#: the blocks that `kdlab readme` fills: name -> (the page holding its markers, the pipeline file copied between them)
BLOCKS = {
    "findings": (Path("README.md"), FINDINGS_MD),
    "q1_brief": (Path("README.md"), Q1_BRIEF_MD),
    "q23_brief": (Path("README.md"), Q23_BRIEF_MD),
    "default": (Path("docs/study-default.md"), FINDINGS_MD),
    "table": (Path("docs/study-default.md"), TABLE_MD),
    "q1": (Path("docs/study-q1.md"), Q1_FINDINGS_MD),
    "q23": (Path("docs/study-q23.md"), Q23_FINDINGS_MD),
    "bench": (Path("docs/speed.md"), BENCH_MD),
}


def markers(block: str) -> tuple[str, str]:
    return f"<!-- {block}:start (kdlab readme) -->", f"<!-- {block}:end -->"


def with_block(page: str, content: str, block: str) -> str:
    """A page's text with the block between ``block``'s markers replaced by ``content``."""
    start_marker, end_marker = markers(block)
    start, end = page.find(start_marker), page.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"no {block} block ({start_marker} ... {end_marker})")
    return page[:start + len(start_marker)] + "\n" + content + page[end:]


def run_readme(root: Path = Path(".")) -> None:
    """Fill every block whose source exists, and say which changed."""
    for block, (page, source) in BLOCKS.items():
        if not (root / source).exists():
            print(f"{page}: {block} block left as it is ({source} not made yet)")
            continue
        text = (root / page).read_text()
        new = with_block(text, (root / source).read_text(), block)
        if new == text:
            print(f"{page}: {block} block unchanged")
        else:
            io.save_text(new, root / page)
            print(f"{page}: {block} block updated from {source}")
