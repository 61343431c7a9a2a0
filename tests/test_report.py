"""fileio.report: the one document writer behind the study report and the demo report."""
from __future__ import annotations

import base64

import numpy as np
from PIL import Image

from fileio.report import Report, format_cell


def test_blocks_render_to_html_and_markdown(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(png)
    doc = Report("T <1>", style="p{color:red}")
    doc.heading("Title & more", 1)
    doc.paragraph("use `ldvce demo` for the *toy* world; 2 < 3")
    doc.table(["a", "b|c"], [[1, 0.12345], ["x", None]], digits=2)
    doc.key_values({"flip_rate": 1.0, "images": 8})
    doc.image("figs/x.png", "figure x", caption=True)
    doc.image(png, "embedded", width=64, embed=True)
    doc.image(tmp_path / "missing.png", "gone", embed=True)
    doc.preformatted('{"k": "<v>"}')
    with doc.box("card"):
        doc.heading("inner", 4)
        doc.paragraph("boxed")
    page = doc.html()
    assert page.startswith("<!DOCTYPE html>") and "<title>T &lt;1&gt;</title>" in page
    assert "p{color:red}" in page and "<h1>Title &amp; more</h1>" in page
    assert "<code>ldvce demo</code>" in page and "<em>toy</em>" in page and "2 &lt; 3" in page
    assert "<th>b|c</th>" in page and "<td>0.12</td>" in page and "<td>–</td>" in page
    assert "<tr><th>flip_rate</th><td>1.000</td></tr>" in page
    assert '<figure><img src="figs/x.png" alt="figure x"><figcaption>figure x</figcaption></figure>' in page
    data = base64.b64encode(png.read_bytes()).decode()
    assert f'<img src="data:image/png;base64,{data}" width="64" alt="embedded">' in page
    assert "gone" not in page and "&lt;v&gt;" in page
    assert '<div class="card"><h4>inner</h4><p>boxed</p></div>' in page
    md = doc.markdown()
    assert "# Title & more\n" in md and "use `ldvce demo` for the *toy* world" in md
    assert "| a | b\\|c |\n|---|---|\n| 1 | 0.12 |\n| x | – |" in md
    assert "![figure x](figs/x.png)" in md and '```\n{"k": "<v>"}\n```' in md and "#### inner" in md
    out = doc.write_html(tmp_path / "r" / "report.html")
    assert out.read_text() == page and not list((tmp_path / "r").glob("*.tmp"))


def test_format_cell():
    assert [format_cell(v) for v in (0.5, 3, None, "s", True)] == ["0.500", "3", "–", "s", "True"]
