"""README.md and docs/: a short front door, and every command they show works as written.

Each command in a ```bash block (and each `make ...` / `kdlab ...` in the prose) is checked without running it:
make targets exist; kdlab commands parse with their options; scripts exist and take the options shown; dvc
commands name subcommands, stages, files and params that exist. Every relative link resolves, anchors included.
"""
import re
import shlex

import pytest
import yaml

from conftest import REPO
from kdlab import cli

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: programs a page may show that are not the project's (their own docs cover them)
OTHERS = {"git", "source", "cd", "export", "mlflow", "pip", "bash", "cp", "ALPHAS", "GPUS"}
DVC = {"repro", "exp", "metrics", "plots", "params", "pull", "push", "status", "queue", "remote", "checkout"}


def _code_lines(text: str) -> list[str]:
    """The command lines of a page's bash blocks, continuations joined and comments cut."""
    out, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if not inside:
            continue
        line = pending + re.sub(r"\s+#.*$", "", line).strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _inline(text: str) -> list[str]:
    return [m for m in re.findall(r"`((?:make|kdlab) [^`]+)`", text)]


def commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for line in _code_lines(text) + _inline(text):
            for part in re.split(r"\s*(?:&&|;|\|\|)\s*", line):
                if part:
                    found.append((page.relative_to(REPO).as_posix(), part))
    return found


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


def _param_exists(assignment: str) -> bool:
    key = assignment.split("=", 1)[0]
    path, _, key = key.rpartition(":") if ":" in key else ("params.yaml", "", key)
    node = yaml.safe_load((REPO / path).read_text())
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _stage_exists(target: str) -> bool:
    if target.endswith(".yaml"):
        return (REPO / target).exists()
    file, _, stage = target.rpartition(":") if ":" in target else ("dvc.yaml", "", target)
    if not stage:
        return (REPO / file).exists()
    stages = yaml.safe_load((REPO / file).read_text())["stages"]
    return stage.split("@")[0] in stages


def check(command: str) -> str | None:
    """What is wrong with one command as a page shows it, if anything."""
    words = shlex.split(re.sub(r"\s*\[[^\]]*\]", "", command))  # a synopsis's [optional] parts dropped
    while words and re.match(r"^[A-Z_]+=", words[0]):  # environment assignments before the program
        words = words[1:]
    prog, args = words[0], words[1:]
    if prog == "make":
        targets = [a for a in args if "=" not in a]
        missing = [t for t in targets if t not in _make_targets()]
        return f"no make target {missing}" if missing else None
    if prog == "kdlab":
        if args and args[0].startswith("<"):  # a placeholder: `kdlab <command>`
            return None
        if args and args[0] not in cli.STAGES:
            return cli.did_you_mean(args[0])
        try:
            cli._parse([a for a in args if a != "..."])
        except SystemExit:
            return f"kdlab does not parse {args}"
        return None
    if prog in ("python", "python3"):
        script = next((a for a in args if a.endswith(".py")), None)
        if script is None:
            return None if args[:1] == ["-m"] else f"python without a script: {args}"
        if not (REPO / script).exists():
            return f"no {script}"
        text = (REPO / script).read_text()
        unknown = [a.split("=")[0] for a in args if a.startswith("--") and f'"{a.split("=")[0]}"' not in text]
        return f"{script} takes no {unknown}" if unknown else None
    if prog == "dvc":
        if not args or args[0] not in DVC:
            return f"dvc {args[:1]} is not a command the project uses"
        sets = [args[i + 1] for i, a in enumerate(args) if a == "-S"]
        bad = [s for s in sets if not _param_exists(s.strip("'"))]
        if bad:
            return f"no param {bad}"
        if args[0] in ("repro", "pull", "push", "status") or args[:2] == ["exp", "run"]:
            targets = [a for a in args[1:] if not a.startswith("-") and a not in sets and a != "run"
                       and not re.match(r"^[\w-]+$", a) or a in ("teacher", "cache")]
            gone = [t for t in targets if not _stage_exists(t)]
            return f"no stage or file {gone}" if gone else None
        return None
    return None if prog in OTHERS else f"{prog}: a program the docs test does not know"


@pytest.mark.parametrize("page,command", commands(), ids=lambda v: v if len(v) < 60 else v[:57] + "...")
def test_every_command_a_page_shows_works(page, command):
    assert check(command) is None, f"{page}: `{command}`: {check(command)}"


def test_the_checker_catches_what_goes_stale():
    assert check("make smoke") is None and check("make nonsense") is not None
    assert check("kdlab results -o x.csv") is None and "did you mean" in check("kdlab resluts")
    assert check("kdlab train --nope") is not None
    assert check("python scripts/smoke.py --dir x") is None and check("python scripts/smoke.py --fast") is not None
    assert check("dvc exp run -S loss.alpha=0.7") is None and check("dvc exp run -S loss.alfa=0.7") is not None
    assert check("dvc repro --single-item studies/q1/dvc.yaml:q1_pilot") is None
    assert check("dvc repro studies/q1/dvc.yaml:q1_nothing") is not None
    assert check("frobnicate --all") is not None


def test_every_relative_link_resolves():
    def slug(heading: str) -> str:
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
            path, anchor = target
            if path.startswith("http"):
                continue
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: link to {path} which does not exist"
            if anchor and dest.suffix == ".md":
                heads = {slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
                assert anchor in heads, f"{page.name}: no heading #{anchor} in {dest.name}"


def test_the_readme_is_a_front_door():
    """At most 250 lines; the first commands on the first screen; every docs page linked from it."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    first_screen = "\n".join(lines[:40])
    for command in ("make smoke", "make repro", "make ui", "make test"):
        assert command in first_screen, command
    text = "\n".join(lines)
    for page in (REPO / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in text, f"README does not link docs/{page.name}"
