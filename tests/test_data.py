"""Loading and validating labelled rows: every error names the file, the line and the field."""

from __future__ import annotations

import pytest
from conftest import write_jsonl

from prompttune.core.data import (
    PAIR_FIELDS,
    SINGLE_FIELDS,
    Dataset,
    Row,
    check_fields,
    from_records,
    infer_fields,
    load_rows,
)
from prompttune.core.errors import DataError


def _rows(n: int) -> Dataset:
    rows = [Row({"text": f"t{i}", "label": "a" if i % 2 else "b"}, i + 1, "f.jsonl") for i in range(n)]
    return Dataset(rows, "f.jsonl")


# --- files ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="file not found") as e:
        load_rows(path)
    assert str(path) in str(e.value)


def test_directory_is_not_a_data_file(tmp_path):
    folder = tmp_path / "rows.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match="is a directory") as e:
        load_rows(folder)
    assert str(folder) in str(e.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("text,label\nhi,a\n")
    with pytest.raises(DataError, match=r"unknown file type '\.txt'") as e:
        load_rows(path)
    assert str(path) in str(e.value)


def test_jsonl_loads_rows_with_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n')
    ds = load_rows(path)
    assert [r.fields["text"] for r in ds] == ["a", "b"]
    assert [r.line for r in ds] == [1, 3]  # blank lines are skipped but still counted
    assert ds.rows[1].where() == f"{path}, line 3"
    assert ds.labels() == ["x", "y"]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", label: "z"}\n')
    with pytest.raises(DataError) as e:
        load_rows(path)
    msg = str(e.value)
    assert f"{path}, line 3" in msg
    assert "not valid JSON" in msg


@pytest.mark.parametrize(("line", "kind"), [('["a", "x"]', "list"), ('"just text"', "str"), ("42", "int")])
def test_json_line_that_is_not_an_object(tmp_path, line, kind):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n' + line + "\n")
    with pytest.raises(DataError, match="expected a JSON object") as e:
        load_rows(path)
    assert f"{path}, line 2" in str(e.value)
    assert kind in str(e.value)


def test_csv_with_header(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('text,label\n"hello, world",greeting\nbye,farewell\n')
    ds = load_rows(path)
    assert [r.fields for r in ds] == [
        {"text": "hello, world", "label": "greeting"},
        {"text": "bye", "label": "farewell"},
    ]
    assert [r.line for r in ds] == [2, 3]  # line 1 is the header
    assert ds.rows[0].where() == f"{path}, line 2"


def test_tsv_with_header(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text("text\tlabel\nhello, world\tgreeting\n")
    assert [r.fields for r in load_rows(path)] == [{"text": "hello, world", "label": "greeting"}]


def test_csv_row_with_wrong_column_count(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\nfine,a\nhello, world,b\n")
    with pytest.raises(DataError) as e:
        load_rows(path)
    msg = str(e.value)
    assert f"{path}, line 3" in msg
    assert "3 values" in msg and "2 columns" in msg
    assert "text, label" in msg


def test_csv_with_utf8_bom(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes("text,label\nhello,greeting\n".encode("utf-8-sig"))
    ds = load_rows(path)
    assert ds.rows[0].fields == {"text": "hello", "label": "greeting"}


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(DataError, match="no rows found") as e:
        load_rows(path)
    assert str(path) in str(e.value)


def test_blank_lines_only_is_empty(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n\n")
    with pytest.raises(DataError, match="no rows found"):
        load_rows(path)


# --- fields --------------------------------------------------------------------------------------


def test_missing_text_field_names_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "label": "x"}, {"txt": "b", "label": "y"}])
    ds = load_rows(path)
    with pytest.raises(DataError) as e:
        check_fields(ds, ["text"], need_label=False)
    msg = str(e.value)
    assert f"{path}, line 2" in msg
    assert "missing field 'text'" in msg
    assert "label, txt" in msg  # what the row has instead


def test_null_field(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": None, "label": "x"}])
    with pytest.raises(DataError, match="field 'text' is null") as e:
        check_fields(load_rows(path), ["text"], need_label=False)
    assert f"{path}, line 1" in str(e.value)


@pytest.mark.parametrize("label", ["", "   ", None])
def test_empty_label(tmp_path, label):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": label}])
    ds = load_rows(path)
    with pytest.raises(DataError, match="empty label") as e:
        check_fields(ds, ["text"], need_label=True)
    assert f"{path}, line 2" in str(e.value)


def test_empty_label_in_csv(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\na,x\nb,\n")
    with pytest.raises(DataError, match="empty label") as e:
        check_fields(load_rows(path), ["text"], need_label=True)
    assert f"{path}, line 3" in str(e.value)


def test_missing_label_only_when_needed(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    ds = load_rows(path)
    check_fields(ds, ["text"], need_label=False)  # predicting needs no label
    with pytest.raises(DataError, match="missing field 'label'") as e:
        check_fields(ds, ["text"], need_label=True)
    assert f"{path}, line 2" in str(e.value)


def test_numeric_labels_become_strings(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    ds = load_rows(path)
    assert ds.labels() == ["1", "0"]
    check_fields(ds, ["text"], need_label=True)


def test_infer_fields_single_and_pair():
    assert infer_fields(from_records([{"text": "a", "label": "x"}])) == SINGLE_FIELDS
    pair = from_records([{"text_a": "a", "text_b": "b", "label": "x"}])
    assert infer_fields(pair) == PAIR_FIELDS == ("text_a", "text_b")
    # both shapes present: the pair wins (the richer task)
    assert infer_fields(from_records([{"text": "t", "text_a": "a", "text_b": "b"}])) == PAIR_FIELDS


def test_infer_fields_pair_data_from_file(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"text_a": "a cat", "text_b": "an animal", "label": "yes"}])
    ds = load_rows(path)
    fields = infer_fields(ds)
    assert fields == ("text_a", "text_b")
    check_fields(ds, fields, need_label=True)


def test_infer_fields_without_text_names_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"sentence": "a", "label": "x"}])
    with pytest.raises(DataError) as e:
        infer_fields(load_rows(path))
    msg = str(e.value)
    assert f"{path}, line 1" in msg
    assert "'text'" in msg and "label, sentence" in msg


def test_half_a_pair_is_not_a_pair():
    with pytest.raises(DataError, match="text_a"):
        infer_fields(from_records([{"text_a": "a", "label": "x"}]))


def test_from_records_strings_and_bad_items():
    ds = from_records(["hello", {"text": "b"}])
    assert [r.fields for r in ds] == [{"text": "hello"}, {"text": "b"}]
    with pytest.raises(DataError, match="item 2: expected a dict or a string, got int"):
        from_records(["ok", 3])


# --- split and fingerprint -------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_complete():
    ds = _rows(50)
    rest, held = ds.split(0.2, seed=7)
    assert len(held) == 10 and len(rest) == 40
    rest_ids = {id(r) for r in rest}
    held_ids = {id(r) for r in held}
    assert not rest_ids & held_ids
    assert rest_ids | held_ids == {id(r) for r in ds}
    # same seed: the same split; another seed: another split
    rest2, held2 = ds.split(0.2, seed=7)
    assert [r.fields for r in held2] == [r.fields for r in held]
    assert [r.fields for r in rest2] == [r.fields for r in rest]
    _, held3 = ds.split(0.2, seed=8)
    assert [r.fields for r in held3] != [r.fields for r in held]
    # rows keep their file order within each part
    assert [r.line for r in held] == sorted(r.line for r in held)


def test_split_holds_out_at_least_one_row():
    rest, held = _rows(4).split(0.01, seed=0)
    assert len(held) == 1 and len(rest) == 3


def test_fingerprint_tracks_content():
    a, b = _rows(5), _rows(5)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint().startswith("sha256:")
    b.rows[3].fields["text"] = "changed"
    assert a.fingerprint() != b.fingerprint()
    c = _rows(5)
    c.rows[0].fields["label"] = "other"
    assert c.fingerprint() != a.fingerprint()
    # where a row came from is not content
    d = _rows(5)
    d.rows[0].line, d.rows[0].source = 99, "elsewhere.csv"
    assert d.fingerprint() == a.fingerprint()


def test_fingerprint_ignores_key_order():
    x = from_records([{"text": "a", "label": "b"}])
    y = from_records([{"label": "b", "text": "a"}])
    assert x.fingerprint() == y.fingerprint()


def test_limit():
    ds = _rows(10)
    assert len(ds.limit(3)) == 3 and ds.limit(None) is ds
