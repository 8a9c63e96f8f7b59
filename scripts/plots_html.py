"""The `dvc plots` page, offline: vega, vega-lite and vega-embed from web/node_modules inlined (no CDN).

    python scripts/plots_html.py                    # dvc plots show   -> reports/plots/index.html
    python scripts/plots_html.py --diff main HEAD   # dvc plots diff   -> reports/plots/index.html
    make plots                                      # installs web/'s packages (npm ci) first

DVC's own page loads vega from jsdelivr and draws nothing without a network. This writes an HTML template
with the three libraries inlined, charts drawn as SVG (so a browser test can count their marks), and passes
it to `dvc plots show|diff --html-template`. Fails if DVC could not load a declared plot.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "web"
LIBS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")
#: every chart as SVG; DVC's page calls vegaEmbed(selector, spec) for each plot
SVG = """<script>
const kdlabEmbed = vegaEmbed;
window.vegaEmbed = (el, spec, opts) => kdlabEmbed(el, spec, Object.assign({renderer: "svg", actions: false}, opts))
  .then(() => document.querySelector(el).setAttribute("data-kdlab-drawn", "1"));
</script>"""


def template(out: Path) -> Path:
    missing = [lib for lib in LIBS if not (WEB / "node_modules" / lib).exists()]
    if missing:
        sys.exit(f"plots_html: {', '.join(missing)} missing under {WEB / 'node_modules'}; run `make plots` "
                 f"(npm ci --prefix web)")
    scripts = "\n".join(f"<script>{(WEB / 'node_modules' / lib).read_text()}</script>" for lib in LIBS)
    page = f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>kdlab: dvc plots</title>
{scripts}
{SVG}
<style>
body {{ font-family: sans-serif; }}
div[id] {{ margin: 12px; display: inline-block; vertical-align: top; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--diff", nargs="+", metavar="REV", help="dvc plots diff these revisions instead of show")
    ap.add_argument("-o", "--out", type=Path, default=Path("reports/plots"), help="output dir (default reports/plots)")
    ap.add_argument("--screenshot", type=Path, help="also save the page as PNG (chromium-headless-shell)")
    a = ap.parse_args()
    tpl = template(Path("build/plots_template.html").resolve())
    dvc = [sys.executable, "-m", "dvc"]  # the venv's, active or not
    cmd = [*dvc, "plots", "diff", *a.diff] if a.diff else [*dvc, "plots", "show"]
    res = subprocess.run([*cmd, "--html-template", str(tpl), "-o", str(a.out)], capture_output=True, text=True)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    if res.returncode or "failed to load" in (res.stdout + res.stderr).lower():
        print("plots_html: dvc could not draw every plot (see above)", file=sys.stderr)
        return 1
    print(f"open {a.out / 'index.html'} (offline: vega is inlined)")
    if a.screenshot:
        subprocess.run(["chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--virtual-time-budget=20000", "--window-size=1100,2300",
                        f"--screenshot={a.screenshot.resolve()}",
                        (a.out / "index.html").resolve().as_uri()], check=True, capture_output=True, timeout=120)
        print(f"wrote {a.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
