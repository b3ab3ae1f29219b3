"""Open a run's or a comparison's ``report.html`` in headless Chromium, network off, and save
a screenshot, to check that the self-contained page renders its tables and plots.

    python scripts/screenshot_report.py runs/defence_matrix/report.html report.png

Chromium: Debian's ``chromium`` package (``apt-get install -y chromium``) or any Chrome on PATH.
Prints the pictures in the DOM Chromium rendered; look at the PNG to see them drawn.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium on PATH: apt-get install -y chromium")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--size", default="1300,4000", help="window width,height in pixels")
    args = parser.parse_args()
    url = args.report.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        common = [chromium(), *FLAGS, f"--user-data-dir={profile}"]
        subprocess.run(
            [*common, f"--window-size={args.size}", f"--screenshot={args.png.resolve()}", url],
            check=True,
            capture_output=True,
            timeout=120,
        )
        dom = subprocess.run(
            [*common, "--virtual-time-budget=5000", "--dump-dom", url],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    images = re.findall(r"<img[^>]*alt=\"([^\"]+)\"", dom)
    print(f"screenshot: {args.png} ({args.png.stat().st_size} bytes)")
    print(f"pictures in the rendered page: {len(images)}: {', '.join(images)}")
    return 0 if images and args.png.stat().st_size > 10_000 else 1


if __name__ == "__main__":
    sys.exit(main())
