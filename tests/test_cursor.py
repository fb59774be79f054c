import pytest

from codegemma.cursor import read_source, split_at_cursor
from codegemma.errors import InvalidRequestError

TEXT = "def f():\r\n    return 1\r\n"


def test_split_keeps_crlf_and_is_one_based():
    assert split_at_cursor(TEXT, "2:5") == ("def f():\r\n    ", "return 1\r\n")
    assert split_at_cursor(TEXT, "1:1") == ("", TEXT)
    assert split_at_cursor(TEXT, "3:1") == (TEXT, "")  # the empty line after the last newline


@pytest.mark.parametrize("cursor", ["0:1", "4:1", "1:20", "x", "1:2:3", "a:b"])
def test_bad_cursors(cursor):
    with pytest.raises(InvalidRequestError, match="cursor"):
        split_at_cursor(TEXT, cursor)


def test_invalid_utf8_file(tmp_path):
    path = tmp_path / "bad.py"
    path.write_bytes(b"x = '\xff'\n")
    with pytest.raises(InvalidRequestError, match="not valid UTF-8"):
        read_source(path)
