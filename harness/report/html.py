"""One self-contained HTML page: sortable leaderboards, curves inlined as base64 PNG, diagnostics, notes."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var up = th.getAttribute('data-dir') !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', up ? 'asc' : 'desc');
    var key = function (row) {
      var cell = row.cells[col], v = cell.getAttribute('data-v');
      return v === null || v === '' ? cell.textContent.trim() : parseFloat(v);
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (typeof x === 'number' && typeof y === 'number') { return up ? x - y : y - x; }
      return up ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; cursor: pointer; }
th[data-dir=asc]::after { content: " \\25B2"; } th[data-dir=desc]::after { content: " \\25BC"; }
td.better { background: #d9f2d9; } td.worse { background: #f8d7d7; }
tr.reference td { font-style: italic; background: #f7f7f7; }
img { max-width: 48%; margin: 0.3em; border: 1px solid #ddd; }
.notes { color: #555; font-size: 13px; }
.scroll { overflow-x: auto; }
"""


def table_html(frame: pd.DataFrame, table_id: str, digits: int = 4) -> str:
    """A sortable table; numeric cells carry their raw value in data-v so sorting is numeric."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.to_dict("records"):
        cells = []
        for col, value in row.items():
            mark = f' class="{value}"' if col == "vs_random" and value in ("better", "worse") else ""
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not pd.isna(value):
                text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
                cells.append(f'<td data-v="{value}"{mark}>{text}</td>')
            else:
                text = "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
                cells.append(f"<td{mark}>{html.escape(text)}</td>")
        ref = ' class="reference"' if row.get("variant") == "full" else ""
        body.append(f"<tr{ref}>{''.join(cells)}</tr>")
    rows = "".join(body)
    return (
        f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def image_html(path: Path, alt: str) -> str:
    """An <img> whose PNG is inlined, so the page needs no other file."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def page(title: str, sections: list[str], notes: list[str], method: str) -> str:
    """The whole page: title, notes on what was read, one section per comparability group, the method."""
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul class='notes'>{note_items}</ul>"
        + "".join(sections)
        + f"<h2>How to read it</h2><p class='notes'>{html.escape(method)}</p>"
        + f"<script>{SORT_JS}</script></body></html>\n"
    )
