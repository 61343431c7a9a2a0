"""A small document writer: headings, paragraphs, tables, images and boxes, as HTML and Markdown.

Every report of the toolkit (the user-study evaluation, the demo) is built from these blocks,
so they share one escaping rule, one page skeleton and one way to embed images. Standard
library only.

    doc = Report("User-study evaluation")
    doc.heading("Selection task")
    doc.paragraph("Counts of every choice; `-1` = nobody smiles.")
    doc.table(["image", "n"], [["27300", 38]])
    doc.image("figures/sel.png", "selection histogram", caption=True)   # linked
    doc.image(run / "overview.png", "overview", embed=True, width=900)  # data: URI
    doc.write_html(out / "report.html"); doc.write_markdown(out / "report.md")

Inline markup in paragraphs (and only there): ```code``` and ``*emphasis*``, the same in both
outputs.
"""
from __future__ import annotations

import base64
import html
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

from fileio import atomic_write_text

BASE_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
              "table{border-collapse:collapse;margin:1em 0}"
              "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}"
              "figure img{max-width:720px}")
_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".webp": "image/webp", ".svg": "image/svg+xml"}


def format_cell(v: Any, digits: int = 3) -> str:
    """A table cell as text: floats with ``digits`` decimals, None as '–', the rest as str()."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _inline_html(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"`([^`]*)`", r"<code>\1</code>", s)
    return re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"<em>\1</em>", s)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


class Report:
    """An ordered list of blocks rendered as one HTML page or one Markdown file.

    Parameters
    ----------
    title : the page title (``<title>``; not added as a heading, call :meth:`heading` for that).
    style : extra CSS appended to :data:`BASE_STYLE`.
    """

    def __init__(self, title: str, style: str = ""):
        self.title = title
        self.style = BASE_STYLE + style
        self.blocks: list[tuple] = []
        self._target = self.blocks

    # ------------------------------------------------------------------------------ blocks
    def heading(self, text: str, level: int = 2) -> None:
        if not 1 <= level <= 6:
            raise ValueError(f"heading level must be 1..6, got {level}")
        self._target.append(("h", level, str(text)))

    def paragraph(self, text: str) -> None:
        self._target.append(("p", str(text)))

    def table(self, header: Sequence[str] | None, rows: Iterable[Sequence[Any]],
              digits: int = 3, row_headers: bool = False) -> None:
        """Rows of cells (formatted by :func:`format_cell`); ``header`` None draws no header
        row; ``row_headers`` makes each row's first cell a header cell."""
        rows = [[format_cell(c, digits) for c in r] for r in rows]
        self._target.append(("table", None if header is None else [str(h) for h in header],
                             rows, row_headers))

    def key_values(self, mapping: dict, digits: int = 3) -> None:
        """A two-column table: one row per key (a summary dict)."""
        self.table(None, [[k, v] for k, v in mapping.items()], digits, row_headers=True)

    def image(self, path: str | os.PathLike, alt: str = "", width: int | None = None,
              embed: bool = False, caption: bool = False) -> None:
        """An image, linked by ``path`` as given (relative to the page) or embedded as a
        ``data:`` URI (``embed=True``; a missing file is left out). ``caption`` wraps it in a
        figure captioned with ``alt``."""
        self._target.append(("img", Path(path) if embed else str(path), str(alt), width, embed,
                             caption))

    def preformatted(self, text: str) -> None:
        self._target.append(("pre", str(text)))

    @contextmanager
    def box(self, css_class: str = "card"):
        """Blocks added inside the ``with`` go into one ``<div class=css_class>`` (Markdown:
        plain sequence)."""
        inner: list[tuple] = []
        outer, self._target = self._target, inner
        try:
            yield self
        finally:
            self._target = outer
        self._target.append(("box", css_class, inner))

    # ----------------------------------------------------------------------------- output
    def html(self) -> str:
        body = "\n".join(self._html(b) for b in self.blocks)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
                f"</title><style>{self.style}</style></head><body>\n{body}\n</body></html>\n")

    def markdown(self) -> str:
        return "\n".join(self._md(b) for b in self.blocks)

    def write_html(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, self.html())
        return Path(path)

    def write_markdown(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, self.markdown())
        return Path(path)

    def _html(self, b: tuple) -> str:
        kind = b[0]
        if kind == "h":
            return f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>"
        if kind == "p":
            return f"<p>{_inline_html(b[1])}</p>"
        if kind == "table":
            _, header, rows, row_headers = b
            head = ("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                    if header is not None else "")
            body = "".join(
                "<tr>" + "".join(f"<th>{html.escape(c)}</th>" if row_headers and i == 0
                                 else f"<td>{html.escape(c)}</td>" for i, c in enumerate(r))
                + "</tr>" for r in rows)
            return f"<table>{head}{body}</table>"
        if kind == "img":
            _, src, alt, width, embed, caption = b
            if embed:
                if not src.is_file():
                    return ""
                mime = _MIME.get(src.suffix.lower(), "application/octet-stream")
                src = f"data:{mime};base64,{base64.b64encode(src.read_bytes()).decode()}"
            w = f' width="{int(width)}"' if width else ""
            tag = f'<img src="{html.escape(src)}"{w} alt="{html.escape(alt)}">'
            return (f"<figure>{tag}<figcaption>{html.escape(alt)}</figcaption></figure>"
                    if caption else tag)
        if kind == "pre":
            return f"<pre>{html.escape(b[1])}</pre>"
        if kind == "box":
            return f'<div class="{html.escape(b[1])}">' + "".join(self._html(x) for x in b[2]) + "</div>"
        raise ValueError(f"unknown block {kind!r}")

    def _md(self, b: tuple) -> str:
        kind = b[0]
        if kind == "h":
            return "#" * b[1] + " " + b[2] + "\n"
        if kind == "p":
            return b[1] + "\n"
        if kind == "table":
            _, header, rows, _ = b
            width = len(header) if header is not None else max((len(r) for r in rows), default=1)
            header = header if header is not None else [""] * width
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * width]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            return "\n".join(lines) + "\n"
        if kind == "img":
            return f"![{b[2]}]({b[1]})\n"
        if kind == "pre":
            return "```\n" + b[1] + "\n```\n"
        if kind == "box":
            return "\n".join(self._md(x) for x in b[2])
        raise ValueError(f"unknown block {kind!r}")
