"""The document model and its two writers: a Doc is a list of blocks (headings, paragraphs, lists, tables,
figures), written to markdown (GitHub: pipe tables, relative PNG links) and to HTML (one self-contained
file, PNGs inlined) through one path, :meth:`Doc.render`, with one :class:`Format` per output."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;white-space:nowrap}th{background:#f2f2f2}
tr:nth-child(even) td{background:#fafafa}figure{margin:1em 0}img{max-width:100%;height:auto}
figcaption{font-size:.9em;color:#555}.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em}
code{background:#f2f2f2;padding:0 .2em}
"""

# What a quoted name or message could otherwise turn into markup: code, emphasis, links and images, raw HTML
# and entities, table pipes, strikethrough, GitHub's $math$. An underscore inside a word starts no emphasis,
# so `max_subtracted` stays readable in the raw file.
_MD_SPECIAL = re.compile(r"[\\`*\[\]<|~$&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# What opens a block at the start of a line: a heading, a quote, a list item (a marker and a space).
_MD_LEAD = re.compile(r"^(?:#{1,6}|[+-]|\d{1,9}[.)])(?=\s|$)|^>")
_CODE_SPAN = re.compile(r"(`[^`]+`)")


def md_escape(text: Any, block: bool = False) -> str:
    """`text` as one line of literal markdown: every character that markdown (GitHub's flavour) would read as
    markup is backslash-escaped, newlines become spaces, so a variant named `a|b` or a message holding `*`,
    `_`, backticks, `<script>` or newlines can neither break a table nor inject markup. The one helper for
    everything index.md quotes: table cells and alt text as they are, sentences with `block`.

    `block`: the text is a paragraph, list item or heading of the report's own, so its `code` spans (the one
    markup its sentences use; the HTML writer turns them into <code>) are kept, everything around them is
    escaped, and a leading '#', '-', '1.' or '>' cannot open a block.
    """
    flat = re.sub(r"[\r\n]+", " ", str(text)).strip()  # a newline would end a table row or a list item
    parts = _CODE_SPAN.split(flat) if block else [flat]
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span: its content is literal markdown already
            out.append(part)
        else:
            out.append(_MD_SPECIAL.sub(lambda m: "\\" + m.group(0), part))
    joined = "".join(out)
    if not block:  # a table cell or alt text: nothing in it can open a block
        return joined
    return _MD_LEAD.sub(lambda m: m.group(0)[:-1] + "\\" + m.group(0)[-1], joined)


def _inline(text: str) -> str:
    """Escape for HTML, then turn `code` spans into <code> (the only markup the report's sentences use)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


@dataclass(frozen=True)
class Format:
    """How one output writes each kind of block. :meth:`Doc.render` walks the blocks once for every format,
    so markdown and HTML cannot drift apart; each function returns one block's text (blocks are joined with
    newlines)."""

    cell: Callable[[Any], str]  # a table cell, header or alt text: quoted verbatim
    text: Callable[[Any], str]  # a sentence of the report's own: its `code` spans kept
    heading: Callable[[int, str], str]  # level (1-3), already-escaped text
    paragraph: Callable[[str], str]
    items: Callable[[list[str], str], str]  # escaped items, css class
    table: Callable[[list[str], list[list[str]]], str]  # escaped header, escaped rows
    caption: Callable[[str], str]  # a table's caption (escaped), before it
    figure: Callable[[Path, str, str], str]  # path, alt (cell), caption (text)
    page: Callable[[str, list[str]], str]  # raw title, the blocks
    after_table: str = ""  # markdown: a blank line must end a pipe table


MARKDOWN = Format(
    cell=md_escape,
    text=lambda value: md_escape(value, block=True),
    heading=lambda level, text: f"{'#' * level} {text}\n",
    paragraph=lambda text: text + "\n",
    items=lambda items, css: "".join(f"- {i}\n" for i in items),
    table=lambda head, rows: "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
                                        *("| " + " | ".join(r) + " |" for r in rows)]),
    caption=lambda text: f"*{text}*\n\n",
    figure=lambda path, alt, caption: f"![{alt}]({path.name})\n\n*{caption}*\n",
    page=lambda title, blocks: "\n".join(blocks),
    after_table="\n",
)


def _html_figure(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'


def _html_page(title: str, blocks: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(blocks) + "\n</body></html>\n")


HTML = Format(
    cell=lambda value: html.escape(str(value)),
    text=_inline,
    heading=lambda level, text: f"<h{level}>{text}</h{level}>",
    paragraph=lambda text: f"<p>{text}</p>",
    items=lambda items, css: (f'<ul class="{css}">' if css else "<ul>") + "".join(f"<li>{i}</li>" for i in items)
    + "</ul>",
    table=lambda head, rows: ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
                              + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
                              + "</tbody></table>"),
    caption=lambda text: f"<p><em>{text}</em></p>",
    figure=_html_figure,
    page=_html_page,
)


def table(df: pd.DataFrame, fmt: Format) -> str:
    """The one table renderer: every header and cell through `fmt.cell`, then the format's layout."""
    return fmt.table([fmt.cell(c) for c in df.columns],
                     [[fmt.cell(v) for v in row] for row in df.itertuples(index=False, name=None)])


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table (no tabulate dependency); every cell as escaped text (:func:`md_escape`)."""
    return table(df, MARKDOWN)


def to_html(df: pd.DataFrame) -> str:
    return table(df, HTML)


@dataclass
class Doc:
    """The report as a list of blocks: ("h", text), ("h3", text), ("p", text), ("ul", (items, css)),
    ("table", (df, caption)), ("fig", (path, caption))."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str], css: str = "") -> None:
        if items:
            self.blocks.append(("ul", (items, css)))

    def table(self, df: pd.DataFrame, caption: str = "") -> None:
        if df is not None and not df.empty:
            self.blocks.append(("table", (df, caption)))

    def figure(self, draw: Any, caption: str, *args: Any) -> None:
        """Draw a figure with `draw(*args)`; a figure that fails becomes a sentence, never a crash."""
        try:
            path = draw(*args)
        except Exception as exc:  # one bad figure must not cost the reader the rest of the report
            self.p(f"(A figure could not be drawn: {caption.split(':')[0]}: {type(exc).__name__}: {exc})")
            return
        if path is not None:
            self.blocks.append(("fig", (path, caption)))

    def block(self, kind: str, value: Any, fmt: Format) -> str:
        if kind in ("h", "h3"):
            return fmt.heading(2 if kind == "h" else 3, fmt.text(value))
        if kind == "p":
            return fmt.paragraph(fmt.text(value))
        if kind == "ul":
            return fmt.items([fmt.text(i) for i in value[0]], value[1])
        if kind == "table":
            df, caption = value
            return (fmt.caption(fmt.text(caption)) if caption else "") + table(df, fmt) + fmt.after_table
        path, caption = value  # "fig"
        return fmt.figure(path, fmt.cell(caption), fmt.text(caption))

    def render(self, fmt: Format) -> str:
        """The whole document in one format: the one path both writers take."""
        title = fmt.heading(1, fmt.text(self.title))
        return fmt.page(self.title, [title, *(self.block(kind, value, fmt) for kind, value in self.blocks)])

    def markdown(self) -> str:
        """GitHub markdown; every text passes through md_escape (names and messages are quoted verbatim)."""
        return self.render(MARKDOWN)

    def html(self) -> str:
        return self.render(HTML)
