"""Contacts CSV: good rows become contacts, each bad row is reported with its line and reason and skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipbridge.dialer.contacts import Contact, ContactsError, RowIssue, iter_contacts, load_contacts


def write(tmp_path: Path, text: str, name: str = "contacts.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_rows_parsed_and_bad_rows_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Number, TimeZone ,name,employee_name,company\n"  # header: any case, spaces ignored
        "(415) 555-0100,America/Los_Angeles,Dana HR,Sam Lee,Acme\n"  # line 2 ok
        "555-0100,,Bob,X,Y\n"  # line 3: no area code
        "+44 20 7946 0958,Europe/London,,Ann,Globex\n"  # line 4 ok
        "\n"  # line 5 blank: ignored
        "212 555 0199,Mars/Base,C,D,E\n"  # line 6: bad zone
        "415.555.0100,,Dup,Z,Z\n"  # line 7: duplicate of line 2
        "212 555 0123,,E,F,G,extra\n"  # line 8: too many cells
        '"212 555 0142",,"Multi\nline",H,I\n'  # lines 9-10: ok, quoted newline
        "abc,,F,G,H\n"  # line 11: not a number
        "312 555 0177\n",  # line 12: short row: missing cells are empty; default zone
    )
    result = load_contacts(path, default_region="US", default_timezone="America/New_York")
    assert [(c.row, c.number, c.timezone) for c in result.contacts] == [
        (2, "+14155550100", "America/Los_Angeles"),
        (4, "+442079460958", "Europe/London"),
        (9, "+12125550142", "America/New_York"),
        (12, "+13125550177", "America/New_York"),
    ]
    first = result.contacts[0]
    assert first.name == "Dana HR"
    assert first.variables == {"employee_name": "Sam Lee", "company": "Acme"}
    assert result.contacts[2].name == "Multi\nline"
    assert result.contacts[3].variables == {"employee_name": "", "company": ""}
    issues = {i.row: i.reason for i in result.issues}
    assert sorted(issues) == [3, 6, 7, 8, 11]
    assert "local number without its area code" in issues[3]
    assert "unknown time zone 'Mars/Base'" in issues[6]
    assert issues[7] == "+14155550100 is already on row 2"
    assert "1 cell(s) more than the 5 columns" in issues[8]
    assert "not a phone number" in issues[11]
    # The bad row is kept as written in the report.
    assert next(i for i in result.issues if i.row == 3).cells == ("555-0100", "", "Bob", "X", "Y")
    assert str(next(i for i in result.issues if i.row == 6)).startswith("row 6: timezone: unknown")


def test_streaming_yields_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, "number\n+14155550100\nnope\n+14155550101\n")
    items = list(iter_contacts(path, default_timezone="UTC"))
    assert [type(i) for i in items] == [Contact, RowIssue, Contact]


def test_no_timezone_anywhere_is_a_row_issue(tmp_path: Path) -> None:
    path = write(tmp_path, "number,timezone\n+14155550100,\n+14155550101,UTC\n")
    result = load_contacts(path)
    assert [c.row for c in result.contacts] == [3]
    assert "no timezone" in result.issues[0].reason


def test_excel_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffnumber,name\r\n+14155550100,Ann\r\n")
    result = load_contacts(path, default_timezone="UTC")
    assert result.contacts[0].name == "Ann" and not result.issues


@pytest.mark.parametrize(
    ("text", "encoding", "error"),
    [
        ("", "utf-8", "the file is empty"),
        ("phone,name\n+14155550100,Ann\n", "utf-8", "no 'number' column"),
        ("number,name,NAME\n", "utf-8", "'NAME' appears more than once"),
        ("number,,x\n", "utf-8", "column 2 has no name"),
        ("number,first name\n", "utf-8", "'first name' is not a usable variable name"),
        ("number,name\n+14155550100,J\u00f6rg\n", "latin-1", "not UTF-8"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, encoding: str, error: str) -> None:
    path = write(tmp_path, text, encoding=encoding)
    with pytest.raises(ContactsError, match=error):
        load_contacts(path, default_timezone="UTC")


def test_missing_file_and_bad_default_zone(tmp_path: Path) -> None:
    with pytest.raises(ContactsError, match="cannot read contacts file"):
        load_contacts(tmp_path / "nope.csv")
    path = write(tmp_path, "number\n+14155550100\n")
    with pytest.raises(ValueError, match="unknown time zone"):
        load_contacts(path, default_timezone="Nowhere/Land")
