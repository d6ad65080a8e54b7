"""Reading VLMEvalKit benchmark TSVs and writing resumable prediction TSVs.

Format (``/work/shared/docs/eval-metrics.md`` A7): tab-separated, first line is
the header, cells quoted with ``"`` only when they contain a tab, quote or
newline (what ``pandas.to_csv(sep='\\t')`` writes). We read it with the
standard :mod:`csv` module instead of pandas (not a dependency), and keep every
cell as the *string* written in the file, so an answer ``"007"`` stays
``"007"`` (pandas would turn a numeric column into ints).

Missing values: an empty cell is missing (pandas writes NaN as an empty cell).
For the optional columns ``hint``, ``A``..``Z``, ``category``, ``l2-category``
and ``split`` the literal strings ``nan``/``NaN`` also count as missing, since
some TSVs were written with ``na_rep='nan'``. We do *not* follow pandas in
turning ``None``/``NA``/``null`` into NaN: an MMBench option ``None`` is text.

Images: the ``image`` cell is base64 (JPEG/PNG). A cell of at most 64
characters is the ``index`` of another row whose image it reuses (the rotated
copies of an MMBench question), and a list literal ``"['b64', 'b64']"`` holds
several images. ``image_path`` is never read.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import os
import re
import string
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..processing.image import ImageLoadError, open_image

__all__ = [
    "Row",
    "Table",
    "ImageDecodeError",
    "OPTIONAL_COLUMNS",
    "REFERENCE_MAX_CHARS",
    "read_tsv",
    "require_columns",
    "parse_answer_list",
    "ImageResolver",
    "decode_base64_image",
    "prediction_header",
    "read_predictions",
    "PredictionWriter",
]

Row = dict[str, "str | None"]

# An image cell this short is a reference to another row's index (VEK rule).
REFERENCE_MAX_CHARS = 64
OPTIONAL_COLUMNS = frozenset({"hint", "category", "l2-category", "split", *string.ascii_uppercase})
_NAN_STRINGS = frozenset({"nan", "NaN"})
_QUOTE_OR_NEWLINE = re.compile(r'["\n]')


def _raise_field_limit() -> None:
    # Base64 images are far larger than csv's 128 KiB default field limit.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # C long is 32 bits on some platforms
            limit //= 2


_raise_field_limit()


class ImageDecodeError(ValueError):
    """A row's image cell cannot be turned into an image (bad base64, unknown reference, not an image)."""


@dataclass
class Table:
    """A TSV as its header and rows; cells are strings, ``None`` where missing."""

    path: Path
    columns: list[str]
    rows: list[Row] = field(default_factory=list)


def _clean(column: str, value: str) -> str | None:
    if value == "":
        return None
    if column in OPTIONAL_COLUMNS and value.strip() in _NAN_STRINGS:
        return None
    return value


def read_tsv(path: str | os.PathLike) -> Table:
    """Read a VEK-style TSV. Raises ``FileNotFoundError``/``ValueError`` with the path in the message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such TSV file: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty (expected a header line)") from None
        except csv.Error as e:
            raise ValueError(f"{path}: cannot parse the header: {e}") from None
        if header and header[0].startswith("\ufeff"):  # UTF-8 BOM from spreadsheet exports
            header[0] = header[0][1:]
        if len(set(header)) != len(header):
            raise ValueError(f"{path}: duplicate column names in the header {header}")
        rows: list[Row] = []
        try:
            for line_no, cells in enumerate(reader, start=2):
                if not cells:
                    continue  # a blank line
                if len(cells) != len(header):
                    raise ValueError(
                        f"{path}: record {line_no - 1} has {len(cells)} cells but the header has "
                        f"{len(header)} columns"
                    )
                rows.append({c: _clean(c, v) for c, v in zip(header, cells)})
        except csv.Error as e:
            raise ValueError(f"{path}: malformed TSV: {e}") from None
    return Table(path=path, columns=header, rows=rows)


def require_columns(table: Table, columns: Iterable[str], what: str) -> None:
    """Raise a ``ValueError`` naming every missing column and what needs it."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{table.path} lacks column(s) {missing} required by {what}; its columns are {table.columns}"
        )


def parse_answer_list(cell: object) -> list[str]:
    """Acceptable answers from an ``answer`` cell.

    ``"['a', 'b']"`` (a Python list literal, as VEK writes VQA/OCRBench/COCO
    answers) gives ``['a', 'b']``, parsed with :func:`ast.literal_eval` (never
    ``eval``). Anything else, including a bracketed string that is not a valid
    literal, is one answer. A missing cell raises.
    """
    if cell is None:
        raise ValueError("the answer cell is empty")
    text = str(cell)
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return [text]
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"the answer list {text!r} is empty")
            return [str(v) for v in value]
    return [text]


def decode_base64_image(data: str) -> Image.Image:
    """base64 -> PIL image, fully decoded; any failure is an :class:`ImageDecodeError`.

    Decoded by :func:`monovl.processing.image.open_image`, the loader of every
    image input, so truncated files fail now, not later. The image keeps its
    stored mode and EXIF data: the processor turns it into RGB (EXIF
    orientation, transparency, 16-bit range) as its settings say.
    """
    try:
        raw = base64.b64decode(data.strip(), validate=False)
    except (binascii.Error, ValueError) as e:
        raise ImageDecodeError(f"invalid base64: {e}") from None
    if not raw:
        raise ImageDecodeError("the base64 data decodes to nothing")
    try:
        return open_image(raw)
    except ImageLoadError as e:
        raise ImageDecodeError(str(e)) from None


class ImageResolver:
    """Images of a row, following ``index`` references to other rows of the same table."""

    def __init__(self, rows: Sequence[Mapping[str, str | None]]):
        # References use the *whole* table, not just the rows selected by --limit.
        self._by_index: dict[str, str | None] = {}
        for row in rows:
            key = str(row["index"])
            self._by_index[key] = row.get("image")

    def _resolve_one(self, cell: str) -> str:
        seen: list[str] = []
        # Follow chains (a reference to a row that is itself a reference); stop on a cycle.
        while len(cell) <= REFERENCE_MAX_CHARS:
            key = cell.strip()
            if key not in self._by_index:
                raise ImageDecodeError(f"image cell {key!r} is neither base64 nor the index of another row")
            if key in seen:
                raise ImageDecodeError(f"image references form a cycle: {' -> '.join(seen + [key])}")
            seen.append(key)
            target = self._by_index[key]
            if target is None:
                raise ImageDecodeError(f"image cell refers to row {key!r}, which has no image")
            cell = target
        return cell

    def base64_of(self, cell: str | None) -> list[str]:
        """The base64 strings of one ``image`` cell (empty list if the row has no image)."""
        if cell is None:
            return []
        text = cell.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                items = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise ImageDecodeError("image cell looks like a list but is not a valid list literal") from None
            if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
                raise ImageDecodeError("image list literal must hold strings")
            return [self._resolve_one(i) for i in items]
        return [self._resolve_one(text)]

    def images(self, row: Mapping[str, str | None]) -> list[Image.Image]:
        return [decode_base64_image(b) for b in self.base64_of(row.get("image"))]


# ---------------------------------------------------------------------------
# Prediction files
# ---------------------------------------------------------------------------


def prediction_header(input_columns: Sequence[str]) -> list[str]:
    """The input columns without the heavy ``image`` (and any old ``prediction``), plus ``prediction``."""
    return [c for c in input_columns if c not in ("image", "prediction")] + ["prediction"]


def _parse_complete_records(text: str) -> tuple[list[list[str]], int, bool]:
    """Records of ``text``, how many characters they span, and whether the text ends inside quotes.

    A record is complete only if it ends with a newline *outside* quotes. The
    writer quotes any cell holding a newline, so a write cut anywhere (even
    right after a newline inside a quoted cell) leaves either no final newline
    or an open quote, and the torn record is detected.
    """
    in_quotes = False
    consumed = 0
    # Only quotes and newlines matter, so visit just those characters.
    for match in _QUOTE_OR_NEWLINE.finditer(text):
        if match.group() == '"':
            in_quotes = not in_quotes  # "" inside quotes toggles twice: no net change
        elif not in_quotes:
            consumed = match.end()
    records = [r for r in csv.reader(io.StringIO(text[:consumed], newline=""), delimiter="\t") if r]
    return records, consumed, in_quotes


def read_predictions(path: str | os.PathLike, header: Sequence[str] | None = None,
                     repair: bool = True) -> list[Row]:
    """Rows of a predictions TSV written by :class:`PredictionWriter` (or any TSV with a ``prediction`` column).

    With ``repair`` (resuming a run) a last record without its newline, or
    with the wrong number of cells, is torn: it is dropped and cut off the
    file so appending can continue cleanly. Without ``repair`` (scoring a file
    someone else may have written) a last record that merely lacks the final
    newline is kept if its quotes are closed and its width is right. A bad
    width anywhere else is an error. ``header``, if given, must match.
    """
    path = Path(path)
    raw = path.read_bytes()
    # A cut inside a multi-byte character can only be in the torn last record.
    text = raw.decode("utf-8", errors="replace")
    records, consumed, open_quote = _parse_complete_records(text)
    tail = text[consumed:]
    if not repair and tail.strip() and not open_quote:
        records += [r for r in csv.reader(io.StringIO(tail, newline=""), delimiter="\t") if r]
        consumed = len(text)
    if not records:
        if repair:  # interrupted while writing the header: start the file again
            path.write_bytes(b"")
            return []
        raise ValueError(f"{path} has no complete header line")
    file_header, body = records[0], records[1:]
    if header is not None and list(file_header) != list(header):
        raise ValueError(
            f"{path} has columns {file_header}, expected {list(header)}: it belongs to another data file "
            f"or task; move it away or pick another --out"
        )
    torn = consumed < len(text)
    if body and len(body[-1]) != len(file_header):
        body = body[:-1]
        torn = True
    for i, cells in enumerate(body):
        if len(cells) != len(file_header):
            raise ValueError(f"{path}: record {i + 1} has {len(cells)} cells, expected {len(file_header)}")
    if torn and repair:
        keep = io.StringIO(newline="")
        writer = csv.writer(keep, delimiter="\t", lineterminator="\n")
        writer.writerow(file_header)
        writer.writerows(body)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(keep.getvalue(), encoding="utf-8", newline="")
        tmp.replace(path)
    return [
        {c: _clean(c, v) if c != "prediction" else v for c, v in zip(file_header, cells)}
        for cells in body
    ]


class PredictionWriter:
    """Append prediction rows to a TSV, one flushed-and-synced write per batch.

    Each batch is serialised first and written with a single ``write`` call,
    so an interruption loses at most that batch (plus possibly leaves a torn
    record, which :func:`read_predictions` removes on resume).
    """

    def __init__(self, path: str | os.PathLike, header: Sequence[str]):
        self.path = Path(path)
        self.header = list(header)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", encoding="utf-8", newline="")
        if new:
            self._write([self.header])

    def _write(self, records: Iterable[Sequence[str]]) -> None:
        buf = io.StringIO(newline="")
        csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(records)
        self._file.write(buf.getvalue())
        self._file.flush()
        os.fsync(self._file.fileno())

    def write_rows(self, rows: Iterable[Mapping[str, str | None]]) -> None:
        self._write([["" if row.get(c) is None else str(row.get(c)) for c in self.header] for row in rows])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
