"""HTML building blocks: escaping, number formats, sortable tables, figure embedding, style.

Every string that comes from a spec, a folder name or a result file goes through :func:`esc`,
in the page and inside plotly figures alike: plotly.js renders trace names, titles, tick
labels and hover text as a subset of HTML, and decodes entities, so an escaped string shows as
the text it is.
"""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go


def esc(value: Any) -> str:
    """Text for HTML (and for plotly strings): ``<img ...>`` shows as text, never as markup."""
    return html.escape("" if value is None else str(value), quote=True)


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt(value: Any, spec: str = ".2f") -> str:
    """A cell: numbers formatted, strings escaped, missing values as an en dash."""
    if missing(value):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return format(value, spec)
    if isinstance(value, int):
        return str(value)
    return esc(value)


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cell(content: str, sort: Any = None) -> dict[str, Any]:
    """A table cell with already-escaped ``content`` and an optional sort key."""
    return {"html": content, "sort": sort}


def table(headers: list[str], rows: list[list[Any]], cls: str = "", caption: str = "") -> str:
    """A table; click a header to sort (numerically where the column holds numbers).

    A cell is a string (already escaped HTML) or :func:`cell` with a sort key. Headers are
    escaped here.
    """
    head = ("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>"
            if any(headers) else "")
    body = []
    for row in rows:
        tds = []
        for c in row:
            if isinstance(c, dict):
                key = c["sort"]
                attr = "" if key is None else f" data-sort='{esc(_sort_key(key))}'"
                tds.append(f"<td{attr}>{c['html']}</td>")
            else:
                tds.append(f"<td>{c}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (f'<table class="{esc(cls)}">{cap}{head}'
            f'<tbody>{"".join(body)}</tbody></table>')


def _sort_key(value: Any) -> str:
    if missing(value):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def figure_div(fig: go.Figure, div_id: str) -> str:
    """The figure as a div and a ``kdPlot`` call (see :func:`plotly_head`).

    The figure's JSON comes from plotly's own encoder, which writes ``<`` as ``\\u003c`` (no
    string can close the script tag) and numpy arrays as typed arrays. The template is left
    out here and applied once by the page, instead of 7 kB of it repeated in every figure.
    """
    subtitles = bool(fig.layout.annotations)  # subplot titles sit under the figure's title
    fig.update_layout(template="none",
                      margin=dict(l=60, r=30, t=110 if subtitles else 80, b=50))
    height = int(fig.layout.height or 450)
    return (f"<div class='figure'><div id='{esc(div_id)}' class='plotly-graph-div' "
            f"style='height:{height}px;width:100%'></div>"
            f"<script>kdPlot('{esc(div_id)}', {fig.to_json()});</script></div>")


def plotly_head() -> str:
    """plotly.js (inlined, once), the page's plot template and ``kdPlot``, for the <head>."""
    from plotly.io import templates
    from plotly.io.json import to_json_plotly
    from plotly.offline import get_plotlyjs

    template = to_json_plotly(templates["plotly_white"].to_plotly_json())
    return (f"<script type='text/javascript'>{get_plotlyjs()}</script>"
            "<script type='text/javascript'>var KD_TEMPLATE=" + template + ";"
            "function kdPlot(id,fig){var layout=fig.layout||{};layout.template=KD_TEMPLATE;"
            "Plotly.newPlot(id,fig.data,layout,{displaylogo:false,responsive:true});}</script>")


def note(text_html: str) -> str:
    return f"<p class='note'>{text_html}</p>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1250px;
color:#222;padding:0 1em;line-height:1.4}
h1{margin-bottom:.2em} h2{margin-top:2em;border-bottom:2px solid #e4e8f0;padding-bottom:.2em}
h3{margin-top:1.4em} .muted{color:#666} .note{color:#666;font-size:14px;font-style:italic}
nav.toc{background:#f7f7f9;padding:.5em 1em;border-radius:6px;font-size:14px}
nav.toc a{margin-right:1.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:14px}
caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none} th:hover{background:#e8ecf4}
th[data-dir=asc]::after{content:" ▲"} th[data-dir=desc]::after{content:" ▼"}
table.trials{font-size:12px} table.trials td{white-space:nowrap} .trials-wrap{max-height:640px;overflow:auto;border:1px solid #eee}
.trials-wrap th{position:sticky;top:0}
.pos{color:#1a7f37;font-weight:600} .neg{color:#b42318;font-weight:600} .eq{color:#1f5fae}
.answer{background:#f6f9ff;border-left:4px solid #4a7bd0;padding:.6em 1em;margin:1em 0}
.kv td:first-child{font-weight:600;background:#fafafa}
pre.spec{background:#f7f7f9;padding:.8em;overflow:auto;font-size:12px;max-height:420px}
.figure{margin:1em 0}
.wide{overflow-x:auto} table.datasets td{white-space:nowrap}
table.datasets details code{display:block;white-space:pre-wrap;max-width:40em;font-size:11px}
.run{border-left:4px solid #ccc;padding-left:1em;margin:1em 0}
"""

SORT_JS = """
(function(){
 function key(td){var s=td.getAttribute('data-sort');return s===null?td.textContent.trim():s;}
 document.querySelectorAll('table th').forEach(function(th){th.addEventListener('click',function(){
  var table=th.closest('table'),body=table.tBodies[0];
  var i=Array.prototype.indexOf.call(th.parentNode.children,th);
  var asc=th.getAttribute('data-dir')!=='asc';
  th.parentNode.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir');});
  th.setAttribute('data-dir',asc?'asc':'desc');
  var rows=Array.prototype.slice.call(body.rows);
  var keys=rows.map(function(r){var k=key(r.cells[i]);var n=parseFloat(k);
   return {r:r,k:k,n:(k!==''&&isFinite(k))?n:null};});
  keys.sort(function(a,b){
   if(a.k===''||a.k==='–')return (b.k===''||b.k==='–')?0:1;   // missing values last
   if(b.k===''||b.k==='–')return -1;
   var c=(a.n!==null&&b.n!==null)?a.n-b.n:a.k.localeCompare(b.k);return asc?c:-c;});
  keys.forEach(function(x){body.appendChild(x.r);});});});
})();
"""
