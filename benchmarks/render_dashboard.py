"""Open a session dashboard in headless Chromium and save a screenshot (issue #21, item 4).

    .venv/bin/cryodecon demo                                  # draws .cryodecon/outputs/sessions/demo/dashboard.html
    .venv/bin/python benchmarks/render_dashboard.py [--html PATH] [--out docs/images/session_dashboard.png]

Chromium comes from the system package manager (``apt-get install -y chromium``).  The page is loaded
from ``file://`` with the network off (``--proxy-server`` pointing nowhere), so a page that needed
anything outside itself would show broken images; the script also checks the HTML names no ``http(s)://``
resource and that the screenshot is not blank.  Exit status 0 when the screenshot was written.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cryodecon_assets.facility.dashboard_figures import check_self_contained

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HTML = REPO / ".cryodecon" / "outputs" / "sessions" / "demo" / "dashboard.html"
DEFAULT_OUT = REPO / "docs" / "images" / "session_dashboard.png"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(browser: str, html: Path, out: Path, width: int, height: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",  # runs as root in containers
            "--disable-gpu",
            "--hide-scrollbars",
            "--proxy-server=127.0.0.1:9",  # no network: the page must be self-contained
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium failed ({completed.returncode}): {completed.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", type=Path, default=DEFAULT_HTML)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    if not args.html.exists():
        print(f"no dashboard at {args.html}: run `.venv/bin/cryodecon demo` first", file=sys.stderr)
        return 2
    browser = find_browser()
    if browser is None:
        print("no Chromium on PATH: apt-get install -y chromium", file=sys.stderr)
        return 2
    text = args.html.read_text(encoding="utf-8")
    outside = check_self_contained(text)
    if outside:
        print(f"the page is not self-contained: {outside}", file=sys.stderr)
        return 1
    screenshot(browser, args.html, args.out, args.width, args.height)
    pixels = np.asarray(Image.open(args.out).convert("L"), dtype=np.float64)
    images = text.count('src="data:image/png;base64,')
    print(
        f"{args.html} ({len(text) / 1e6:.1f} MB, {images} inline images) -> {args.out} "
        f"({pixels.shape[1]}×{pixels.shape[0]} px, grey-level σ {pixels.std():.1f})"
    )
    if pixels.std() < 5.0:
        print("the screenshot is blank", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
