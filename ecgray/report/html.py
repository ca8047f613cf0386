"""A self-contained HTML page: inline CSS, PNGs as base64 data URIs, no scripts, no external files."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;
     color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1.2em 0 2.2em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;max-width:1100px;margin-top:.4em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em;margin:1em 0}
"""


@dataclass
class FigureItem:
    png: bytes
    filename: str
    caption: str  # trusted HTML (built by ecgray.report.figures)
    alt: str


@dataclass
class Section:
    title: str
    intro: str = ""  # trusted HTML
    items: list = field(default_factory=list)  # FigureItem | str (trusted HTML)


def esc(x) -> str:
    return html.escape("" if x is None else str(x))


def table(header: Sequence[str], rows: Sequence[Sequence], *, numeric: Sequence[bool] | None = None,
          caption: str | None = None) -> str:
    """An escaped HTML table."""
    numeric = numeric or [False] * len(header)
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for v, num in zip(row, numeric):
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(f"<td class=\"num\">{esc(v)}</td>" if num else f"<td>{esc(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def figure_html(item: FigureItem) -> str:
    b64 = base64.b64encode(item.png).decode("ascii")
    return (f"<figure id=\"{esc(item.filename)}\"><img src=\"data:image/png;base64,{b64}\" alt=\"{esc(item.alt)}\" "
            f"data-file=\"{esc(item.filename)}\"><figcaption>{item.caption}</figcaption></figure>")


def page(title: str, meta: str, sections: Sequence[Section]) -> str:
    body = [f"<h1>{esc(title)}</h1>", f"<p class=\"meta\">{meta}</p>"]
    toc = "".join(f"<li><a href=\"#s{i}\">{esc(s.title)}</a></li>" for i, s in enumerate(sections))
    body.append(f"<ul>{toc}</ul>")
    for i, s in enumerate(sections):
        body.append(f"<h2 id=\"s{i}\">{esc(s.title)}</h2>")
        if s.intro:
            body.append(f"<p>{s.intro}</p>")
        for it in s.items:
            body.append(figure_html(it) if isinstance(it, FigureItem) else it)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
