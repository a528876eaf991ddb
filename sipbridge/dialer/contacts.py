"""The contacts CSV of a campaign, read row by row: bad rows are reported and skipped, the rest go on.

Header row required. Columns (names are case-insensitive, surrounding spaces ignored):

* ``number`` (required): the phone number, any common format; normalised to E.164 with the campaign's
  ``default_region`` for national numbers;
* ``timezone`` (optional): the callee's IANA zone; the campaign's ``default_timezone`` when the column or the
  cell is empty;
* ``name`` (optional): the callee's name;
* every other column is a variable for the flow (``{employee_name}`` ...), by its header name.

Row numbers are file line numbers (the header is line 1), so an operator can find the row in an editor. A
problem with the file as a whole (unreadable, not UTF-8, no header, no ``number`` column, a bad or repeated
column name) raises :class:`ContactsError`, since no row could be read correctly.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sipbridge.dialer.numbers import NumberError, normalize_e164
from sipbridge.dialer.window import resolve_timezone

__all__ = ["Contact", "ContactsError", "ContactsResult", "RowIssue", "iter_contacts", "load_contacts"]

log = logging.getLogger(__name__)

_RESERVED = ("number", "timezone", "name")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ContactsError(Exception):
    """The file cannot be read as a contacts CSV at all."""


@dataclass(frozen=True)
class Contact:
    row: int  # line number of the row in the file
    number: str  # E.164
    timezone: str  # IANA name
    name: str = ""
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RowIssue:
    row: int
    reason: str
    cells: tuple[str, ...] = ()  # the row as read, so nothing the operator wrote is lost from the report

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason}"


@dataclass(frozen=True)
class ContactsResult:
    contacts: list[Contact]
    issues: list[RowIssue]


def _header(cells: list[str], path: str) -> tuple[dict[str, int], dict[str, int]]:
    """Reserved column -> index, and variable name -> index."""
    reserved: dict[str, int] = {}
    variables: dict[str, int] = {}
    seen: set[str] = set()
    for index, cell in enumerate(cells):
        raw = cell.strip()
        key = raw.lower()
        if not raw:
            raise ContactsError(f"{path}: line 1: column {index + 1} has no name")
        if key in seen:
            raise ContactsError(f"{path}: line 1: column {raw!r} appears more than once")
        seen.add(key)
        if key in _RESERVED:
            reserved[key] = index
        elif _VARIABLE.match(raw):
            variables[raw] = index
        else:
            raise ContactsError(
                f"{path}: line 1: column {raw!r} is not a usable variable name (letters, digits, _; "
                "not starting with a digit)"
            )
    if "number" not in reserved:
        raise ContactsError(f"{path}: line 1: no 'number' column (header: {', '.join(cells)})")
    return reserved, variables


def iter_contacts(
    path: str | os.PathLike[str], default_region: str | None = None, default_timezone: str | None = None
) -> Iterator[Contact | RowIssue]:
    """Yield each row as a Contact or a RowIssue, in file order. Duplicated numbers are issues (the first
    row with the number wins), so no callee is called twice in one campaign."""
    if default_timezone is not None:
        resolve_timezone(default_timezone)
    name = str(path)
    try:
        handle = open(path, encoding="utf-8-sig", newline="")  # utf-8-sig: Excel writes a BOM
    except OSError as exc:
        raise ContactsError(f"{name}: cannot read contacts file: {exc.strerror}") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise ContactsError(f"{name}: the file is empty (a header row with 'number' is needed)")
            reserved, variables = _header(header, name)
            seen: dict[str, int] = {}
            line = reader.line_num
            for cells in reader:
                row, line = line + 1, reader.line_num  # a quoted cell may span lines: report where it starts
                if not any(cell.strip() for cell in cells):
                    continue  # blank line
                item = _row(cells, row, header, reserved, variables, default_region, default_timezone)
                if isinstance(item, Contact):
                    first = seen.setdefault(item.number, row)
                    if first != row:
                        item = RowIssue(row, f"{item.number} is already on row {first}", tuple(cells))
                if isinstance(item, RowIssue):
                    log.warning("%s: %s", name, item)
                yield item
        except UnicodeDecodeError as exc:
            raise ContactsError(f"{name}: not UTF-8 text (byte {exc.start} of a read block)") from exc
        except csv.Error as exc:
            raise ContactsError(f"{name}: line {reader.line_num}: not valid CSV: {exc}") from exc


def _row(
    cells: list[str],
    row: int,
    header: list[str],
    reserved: dict[str, int],
    variables: dict[str, int],
    default_region: str | None,
    default_timezone: str | None,
) -> Contact | RowIssue:
    kept = tuple(cells)
    if len(cells) > len(header):
        extra = len(cells) - len(header)
        return RowIssue(row, f"{extra} cell(s) more than the {len(header)} columns of the header", kept)

    def cell(index: int | None) -> str:
        return cells[index].strip() if index is not None and index < len(cells) else ""

    raw_number = cell(reserved["number"])
    try:
        number = normalize_e164(raw_number, default_region)
    except NumberError as exc:
        return RowIssue(row, f"number {exc}", kept)
    zone = cell(reserved.get("timezone")) or default_timezone
    if not zone:
        return RowIssue(row, "no timezone in the row and the campaign has no default_timezone", kept)
    try:
        resolve_timezone(zone)
    except ValueError as exc:
        return RowIssue(row, f"timezone: {exc}", kept)
    return Contact(
        row=row,
        number=number,
        timezone=zone,
        name=cell(reserved.get("name")),
        variables={key: cell(index) for key, index in variables.items()},
    )


def load_contacts(
    path: str | os.PathLike[str] | Path,
    default_region: str | None = None,
    default_timezone: str | None = None,
) -> ContactsResult:
    contacts: list[Contact] = []
    issues: list[RowIssue] = []
    for item in iter_contacts(path, default_region, default_timezone):
        if isinstance(item, Contact):
            contacts.append(item)
        else:
            issues.append(item)
    return ContactsResult(contacts, issues)
