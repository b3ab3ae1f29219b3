"""Every run's report.html: report.md rendered, its pictures inlined, nothing fetched."""

from __future__ import annotations

import base64
import re

import numpy as np

from splitsim.reporting import html_page, pyplot, save_figure


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
