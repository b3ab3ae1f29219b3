"""Every run's report.html: report.md rendered, its pictures inlined, nothing fetched."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from splitsim.reporting import html_page, pyplot, save_figure

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT / "scenarios" / "hidden_covid_app.yaml"
SCRIPT = ROOT / "scripts" / "screenshot_report.py"


def test_the_page_inlines_the_run_folders_pictures_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot(np.arange(5))
    save_figure(fig, run / "training.png")
    (tmp_path / "outside.png").write_bytes((run / "training.png").read_bytes())
    text = (
        "# Run\n\n| metric | value |\n|---|---|\n| accuracy | 0.9 |\n\n"
        "![training](training.png)\n\n![escape](../outside.png)\n\n"
        "![remote](http://example.com/x.png)\n\n- a <script>alert(1)</script> item\n"
    )
    page = html_page(text, run, "demo <run>")
    assert "<table>" in page and "<td>0.9</td>" in page and "<title>splitsim: demo &lt;run&gt;"
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3
    inlined = sources[0].removeprefix("data:image/png;base64,")
    assert base64.b64decode(inlined) == (run / "training.png").read_bytes()
    assert sources[1:] == ["", ""]  # outside the folder, or remote: dropped, never fetched
    assert "http" not in page and "<script" not in page and "&lt;script&gt;" in page


@pytest.mark.slow
def test_a_runs_page_renders_in_headless_chromium(tmp_path):
    # Debian's chromium (.ci/run installs it); elsewhere the test says what it needs
    if shutil.which("chromium") is None and not os.environ.get("CI"):
        pytest.skip("needs Chromium on PATH: apt-get install -y chromium")
    from PIL import Image

    import splitsim

    small = {"dataset.train_records": 500, "dataset.test_records": 200, "training.epochs": 2,
             "deployment.clients": 2, "deployment.users": 40}  # fmt: skip
    run = splitsim.run(COVID, set=small, out=tmp_path / "runs", quiet=True).folder
    shot = tmp_path / "page.png"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(run / "report.html"), str(shot), "--size", "1200,2400"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # both of the run's pictures are in the page Chromium rendered, from the page itself
    assert "pictures in the rendered page: 2" in proc.stdout, proc.stdout
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    ink = (pixels < 200).any(axis=1).mean()  # text, table rules and the plots
    colours = len(np.unique(pixels // 16, axis=0))
    # measured: 0.060 and 252 for this page; 0.013 and 49 with its pictures blanked
    assert ink > 0.03 and colours > 120, (ink, colours)
