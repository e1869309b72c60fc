"""A self-contained HTML report: headings, text, tables, figures as embedded PNG, JSON blocks.

One file with no external references (images are base64 data URIs, the style sheet is inline), so
it can be mailed or attached to a CI run. Everything the caller passes is escaped. Figures are
rendered with fixed metadata so the same report renders to the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dojo.errors import DojoError
from dojo.paths import can_create_in
from dojo.report.files import write_bytes_atomic, write_text_atomic

# Long unbroken words (a plan like dp=8,tp=1,pp=1,mb=1,...) wrap instead of running off the page.
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       padding: 0 1em; }
h1, h2, h3, h4, p, th, td, figcaption { overflow-wrap: anywhere; word-break: break-word; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
"""

# PNG metadata left out so that a figure renders to the same bytes every time.
_PNG_METADATA: dict[str, Any] = {"Software": None}
# Formats a chart may be written in, by file extension, with the metadata that would make two
# renderings differ (dates, versions) left out.
FIGURE_FORMATS: dict[str, dict[str, Any]] = {
    "png": _PNG_METADATA, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


def check_outputs_apart(outputs: Sequence[tuple[str, str | None]],
                        inputs: Sequence[tuple[str, str | None]]) -> None:
    """DojoError when two output flags name one file (the second write would replace the first)
    or an output names an input file (`--trace mine.toml` with `--system mine.toml`, a model's
    `file.py:factory`), which the write would replace. Inputs may carry a `:N` or `:factory`
    suffix; `None` entries (a flag not given) are skipped."""
    written: dict[object, tuple[str, str]] = {}
    for flag, path in outputs:
        if path is None:
            continue
        key = _file_key(path)
        if key in written:
            first = written[key]
            raise DojoError(f"{flag} {path}: the same file as {first[0]} {first[1]}: expected a "
                            "different file for each output")
        written[key] = (flag, path)
    for flag, text in inputs:
        for candidate in (text, (text or "").rpartition(":")[0]):
            if candidate and os.path.isfile(candidate) and _file_key(candidate) in written:
                out_flag, out_path = written[_file_key(candidate)]
                raise DojoError(f"{out_flag} {out_path}: is the input file of {flag} {text}: "
                                "expected an output path that is not an input (the write "
                                "would replace it)")


def _file_key(path: str) -> object:
    """What makes two paths one file: (device, inode) for a file that exists, so a symlink or
    a hard link to an input is caught; the resolved path for one not yet written."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


def check_output(path: str | Path, flag: str, formats: Sequence[str] = ()) -> Path:
    """Check an output file path before any work: DojoError naming `flag` when it is empty, a
    folder, below a missing folder or a file, not writable, or (with `formats`) has an
    extension not in `formats`."""
    text = str(path)
    target = Path(text)
    if not text.strip():  # quoted as typed: ' ' is not ''
        raise DojoError(f"{flag} = {text!r}: expected a file path")
    # A symlink is written through (write_bytes_atomic replaces its target, never the link):
    # check what it points to, so /dev/stdout on a terminal or a pipe is a special file.
    real = Path(os.path.realpath(text))
    if target.is_dir():
        raise DojoError(f"{flag} {text}: is a folder: expected a file path inside it")
    if text.endswith(("/", os.sep)):  # Path() drops the slash: 'x.toml/' would be 'x.toml'
        raise DojoError(f"{flag} {text}: ends with '/': expected a file path, not a folder")
    if (target.exists() and not target.is_file()) or (real.exists() and not real.is_file()) \
            or (real != target.absolute() and str(real).startswith("/proc/")):
        # /dev/full, a FIFO, /dev/stdout (-> /proc/self/fd/1): atomic writes would replace them
        raise DojoError(f"{flag} {text}: is a device or special file: expected a regular file "
                        "path")
    ext = target.suffix.lower().lstrip(".")
    if formats and ext not in formats:
        got = f"extension '.{ext}'" if ext else "no extension"
        raise DojoError(f"{flag} {text}: {got}: expected one of "
                        f"{', '.join('.' + f for f in formats)}")
    folder = target.parent
    if not folder.is_dir() or not real.parent.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DojoError(f"{flag} {text}: folder '{folder}' {what}")
    if not can_create_in(folder) or not can_create_in(real.parent):
        raise DojoError(f"{flag} {text}: folder '{folder}' is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise DojoError(f"{flag} {text}: the file is not writable")
    return target


def write_figure(fig: Any, path: str | Path, flag: str, dpi: int = 110) -> Path:
    """Write a matplotlib figure in the format its extension names (PNG, SVG or PDF)."""
    target = check_output(path, flag, tuple(FIGURE_FORMATS))
    fmt = target.suffix.lower().lstrip(".")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=FIGURE_FORMATS[fmt])
    return write_bytes_atomic(target, buf.getvalue())


def _cell(value: Any) -> tuple[str, bool]:
    """(escaped text, is numeric) of one table cell."""
    if isinstance(value, bool) or value is None:
        return html.escape(str(value)), False
    if isinstance(value, int):
        return f"{value:,}", True
    if isinstance(value, float):
        return html.escape(f"{value:.6g}"), True
    return html.escape(str(value)), False


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure, deterministic (no timestamp or version in the file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=_PNG_METADATA)
    return buf.getvalue()


def array_png(array: Any) -> bytes:
    """PNG bytes of an image array: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8 values
    are kept exactly, floats are taken as 0..1."""
    import numpy as np
    from matplotlib import image as mpimg

    data = np.asarray(array)
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] not in (3, 4)):
        raise ValueError(f"image array of shape {data.shape}: expected (H, W), (H, W, 3) or "
                         "(H, W, 4)")
    if data.ndim == 2:
        data = np.repeat(data[:, :, None], 3, axis=2)     # (H, W, 3): grey kept exact
    buf = io.BytesIO()
    mpimg.imsave(buf, data, format="png", metadata=_PNG_METADATA)
    return buf.getvalue()


class HtmlReport:
    """Build a report part by part, then `html()` or `write(path)`.

    Each method appends one part and returns the report, so calls can be chained.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []
        self.figures = 0

    def heading(self, text: str, level: int = 2) -> HtmlReport:
        """A section heading; level 1 is the title's level, 2..4 below it."""
        level = min(max(level, 1), 6)
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str) -> HtmlReport:
        self._parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def table(self, rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None
              ) -> HtmlReport:
        """A table; ints get thousands separators, floats 6 significant digits, numbers align
        right. Pre-formatted strings (e.g. from `si`) are shown as given."""
        out = ["<table>"]
        if headers:
            out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
                       + "</tr>")
        for row in rows:
            cells = []
            for value in row:
                text, numeric = _cell(value)
                cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
        self._parts.append("\n".join(out))
        return self

    def figure(self, fig: Any, caption: str = "", close: bool = True) -> HtmlReport:
        """Embed a matplotlib figure as a PNG; the figure is closed afterwards unless told."""
        png = figure_png(fig)
        if close:
            _close(fig)
        return self.image(png, caption)

    def image(self, image: bytes | Any, caption: str = "") -> HtmlReport:
        """Embed PNG bytes, or an image array (see `array_png`)."""
        png = bytes(image) if isinstance(image, bytes | bytearray) else array_png(image)
        if not png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("image bytes are not a PNG file")
        data = base64.b64encode(png).decode("ascii")
        alt = html.escape(caption or f"figure {self.figures + 1}", quote=True)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                           f"{cap}</figure>")
        self.figures += 1
        return self

    def json_block(self, obj: Any) -> HtmlReport:
        """`obj` as indented JSON in a preformatted block (non-JSON values shown with str)."""
        text = json.dumps(obj, indent=2, default=str)
        self._parts.append(f'<pre><code class="json">{html.escape(text)}</code></pre>')
        return self

    def html(self) -> str:
        """The whole document."""
        title = html.escape(self.title)
        body = "\n".join(self._parts)
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
                f"<h1>{title}</h1>\n{body}\n</body>\n</html>\n")

    def write(self, path: str | Path, flag: str = "report") -> Path:
        """Write the document to `path` atomically; returns the path. A folder, a missing or
        read-only folder is a DojoError naming `flag` (the option the path came from)."""
        return write_text_atomic(check_output(path, flag), self.html())


def _close(fig: Any) -> None:
    """Free a figure: pyplot figures are released from pyplot's registry, others just cleared."""
    import sys

    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
