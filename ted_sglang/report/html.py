"""The page: one self-contained HTML file, no script, no request leaves it.

Every text that comes from a file (experience texts, ids, categories, paths, error
messages) goes through :func:`esc`; figures are PNG ``data:`` URLs; a
Content-Security-Policy forbids anything but inline styles and ``data:`` images.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

from ted_sglang.report.sources import finite

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       margin: 0 auto; padding: 24px 32px 48px; max-width: 1200px; background: #fafafa; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 20px 0 6px; }
.meta { color: #555; margin: 0 0 16px; }
.meta code, td code { font-size: 12px; background: #eee; padding: 1px 4px; border-radius: 3px;
       overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px;
        min-width: 130px; }
.card .value { font-size: 20px; font-weight: 600; }
.card .name { color: #666; font-size: 12px; }
figure { margin: 12px 0; background: #fff; border: 1px solid #ddd; border-radius: 6px;
         padding: 8px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: #555; font-size: 12px; margin-top: 4px; }
table { border-collapse: collapse; background: #fff; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top;
         max-width: 40em; overflow-wrap: break-word; }
th { background: #f0f0f0; white-space: nowrap; }
td code { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 520px; white-space: pre-wrap; overflow-wrap: anywhere; }
.good { color: #2e7d32; } .bad { color: #c62828; }
.notes { background: #fff8e1; border: 1px solid #f0d98c; border-radius: 6px; padding: 6px 12px; }
.empty { color: #777; font-style: italic; }
"""


def esc(value: object) -> str:
    """``value`` as HTML text (quotes too)."""
    return html.escape(str(value), quote=True)


def page(title: str, body: Iterable[str]) -> str:
    """The whole document."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def figure(plot_id: str, png: bytes | None, caption: str, empty: str) -> str:
    """A plot (``png``) with its caption, or the ``empty`` sentence when there is none."""
    if png is None:
        return f'<p class="empty" id="{esc(plot_id)}-missing">{esc(empty)}</p>'
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="plot" id="{esc(plot_id)}">'
        f'<img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str = "") -> str:
    """A table; a cell is text (escaped), a number (right-aligned) or :class:`Raw` HTML."""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cards(items: Iterable[tuple[str, str]]) -> str:
    """Headline figures: (name, value) pairs."""
    inner = "".join(
        f'<div class="card"><div class="value">{esc(v)}</div><div class="name">{esc(n)}</div></div>'
        for n, v in items
    )
    return f'<div class="cards">{inner}</div>'


def notes(lines: Sequence[str]) -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f'<div class="notes" id="notes"><strong>Read with care</strong><ul>{items}</ul></div>'


class Raw(str):
    """HTML already built from escaped parts (a table cell that holds markup)."""


class Text(str):
    """A long text cell (wraps, keeps line breaks)."""


class Num(str):
    """A number already formatted (right-aligned)."""


def pct(value: object) -> Num:
    """A fraction as a percentage; anything but a finite number shows as a dash."""
    number = finite(value)
    return Num("–" if number is None else f"{100 * number:.1f}%")


def signed_pct(value: object) -> Raw:
    value = finite(value)
    if value is None:
        return Raw("–")
    css = "good" if value > 0 else "bad" if value < 0 else ""
    return Raw(f'<span class="{css}">{100 * value:+.1f} pt</span>')


def _cell(value: Any) -> str:
    if isinstance(value, Raw):
        return f"<td>{value}</td>"
    if isinstance(value, Text):
        return f'<td class="text">{esc(value)}</td>'
    if isinstance(value, Num):
        return f'<td class="num">{esc(value)}</td>'
    if isinstance(value, bool) or value is None:
        return f"<td>{esc('–' if value is None else value)}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    return f"<td>{esc(value)}</td>"
