"""User JSONL/CSV files: good input loads; each kind of malformed input names its file and line."""

import json

import pytest

from linalign import data
from linalign.data import DataError


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_roundtrip(tmp_path):
    recs = [{"text": "Rates rise again.", "label": "business", "extra": 1},
            {"text": "Über café naïve — unicode ✓", "label": "tech"}]
    p = _write(tmp_path / "mine.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n\n")
    c = data.load_corpus(p)
    assert c.name == "mine" and c.texts == [r["text"] for r in recs]
    assert c.labels == ["business", "tech"] and c.label_names == ("business", "tech")
    assert c.ids == ["1", "2"] and c.metadata["format"] == "jsonl"


def test_jsonl_bom_and_crlf(tmp_path):
    p = tmp_path / "win.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "a", "label": "x"}\r\n{"text": "b", "label": "y"}\r\n')
    c = data.load_jsonl(p)
    assert c.texts == ["a", "b"] and c.labels == ["x", "y"]


def test_jsonl_custom_fields_and_unlabelled(tmp_path):
    p = _write(tmp_path / "x.jsonl", '{"body": "one", "topic": "a"}\n{"body": "two", "topic": "b"}\n')
    c = data.load_jsonl(p, text_field="body", label_field="topic", name="custom")
    assert c.name == "custom" and c.labels == ["a", "b"]
    assert data.load_jsonl(p, text_field="body").labels is None  # no "label" key anywhere
    assert data.load_jsonl(p, text_field="body", label_field=None).labels is None


@pytest.mark.parametrize("content,line,message", [
    ('{"text": "ok", "label": "a"}\n{"text": "broken", \n', 2, "invalid JSON"),
    ('{"text": "ok"}\n\n["not", "an", "object"]\n', 3, "expected a JSON object, got list"),
    ('{"text": "ok"}\n{"txt": "typo"}\n', 2, "missing text field 'text'"),
    ('{"text": "ok"}\n{"text": "   "}\n', 2, "text field 'text' is empty"),
    ('{"text": 42}\n', 1, "is int, not a string"),
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": 3}\n', 2, "label 3 is int, not a string"),
    ('{"text": "a", "label": "x"}\n{"text": "b"}\n', 2, "missing label field 'label'"),
    ('{"text": "a"}\n{"text": "b", "label": "x"}\n', 2, "first record does not"),
    ('{"text": "a", "label": ""}\n', 1, "label field 'label' is empty"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, line, message):
    p = _write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError) as err:
        data.load_corpus(p)
    assert str(err.value).startswith(f"{p}:{line}: ")
    assert message in str(err.value)


def test_jsonl_invalid_utf8_and_empty(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{p}:2: not valid UTF-8"):
        data.load_jsonl(p)
    with pytest.raises(DataError, match="no records"):
        data.load_jsonl(_write(tmp_path / "empty.jsonl", "\n\n"))
    with pytest.raises(DataError, match="no such file"):
        data.load_corpus(tmp_path / "missing.jsonl")


def test_csv_roundtrip(tmp_path):
    p = _write(tmp_path / "mine.csv",
               'id,text,label\n1,"Plain text",a\n2,"Quoted, with comma\nand a newline",b\n'
               '3,"She said ""hi""",a\n')
    c = data.load_corpus(p)
    assert c.texts == ["Plain text", "Quoted, with comma\nand a newline", 'She said "hi"']
    assert c.labels == ["a", "b", "a"]
    assert c.ids == ["2", "3", "5"]  # the line each row starts on


def test_tsv_and_bom(tmp_path):
    p = tmp_path / "mine.tsv"
    p.write_bytes("\ufefftext\tlabel\nhello\tx\n".encode("utf-8"))
    c = data.load_corpus(p)
    assert c.texts == ["hello"] and c.labels == ["x"]
    unlabelled = data.load_csv(_write(tmp_path / "u.csv", "text\nonly text\n"))
    assert unlabelled.labels is None


@pytest.mark.parametrize("content,line,message", [
    ("text,label\na,x\nb,y,extra\n", 3, "3 fields, header has 2"),
    ('text,label\n"multi\nline",x\n,y\n', 4, "text column 'text' is empty"),
    ("text,label\na,x\nb,\n", 3, "label column 'label' is empty"),
    ("body,label\na,x\n", 1, "no column 'text' in header"),
])
def test_csv_errors_name_the_line(tmp_path, content, line, message):
    p = _write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError) as err:
        data.load_corpus(p)
    assert str(err.value).startswith(f"{p}:{line}: ")
    assert message in str(err.value)


def test_csv_invalid_utf8_and_empty(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes(b"text\nok\ncaf\xe9\n")
    with pytest.raises(DataError, match=rf"{p}:3: not valid UTF-8"):
        data.load_csv(p)
    with pytest.raises(DataError, match="empty file"):
        data.load_csv(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(DataError, match="no records"):
        data.load_csv(_write(tmp_path / "header_only.csv", "text,label\n"))


def test_txt_one_text_per_nonempty_line(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_bytes("  first text \n\nsecond — text\n   \nthird\n".encode("utf-8"))
    c = data.load_corpus(p)
    assert c.texts == ["first text", "second — text", "third"] and c.labels is None
    assert c.name == "notes" and c.metadata["format"] == "txt"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nalso ok\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"bad.txt:3: not UTF-8"):
        data.load_corpus(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="no records"):
        data.load_corpus(empty)
