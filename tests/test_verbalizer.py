"""Verbalizer: label words from a spec string or a JSON file, and its errors."""

from __future__ import annotations

import json

import pytest

from prompttune.core.errors import DataError
from prompttune.core.verbalizer import Verbalizer, default_word

LABELS = ["negative", "positive"]


def test_no_spec_uses_the_labels():
    v = Verbalizer.parse(LABELS, None)
    assert v.words == {"negative": ["negative"], "positive": ["positive"]}
    assert Verbalizer.parse(LABELS, "").words == v.words


def test_parse_spec_string():
    v = Verbalizer.parse(LABELS, "positive=great|good ; negative = bad")
    assert v.labels == LABELS
    assert v.words == {"positive": ["great", "good"], "negative": ["bad"]}
    assert v.display_words == ["bad", "great"]  # first word of each label, in label order
    assert v.forms() == [(0, "bad"), (1, "great"), (1, "good")]


def test_parse_partial_spec_fills_defaults():
    v = Verbalizer.parse(["not_entailment", "entailment"], "entailment=yes")
    assert v.words == {"entailment": ["yes"], "not_entailment": ["not entailment"]}


def test_parse_json_file(tmp_path):
    path = tmp_path / "words.json"
    path.write_text(json.dumps({"positive": ["great", "good"], "negative": "bad"}))
    v = Verbalizer.parse(LABELS, str(path))
    assert v.words == {"positive": ["great", "good"], "negative": ["bad"]}


def test_json_file_missing(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DataError, match="file not found") as e:
        Verbalizer.parse(LABELS, str(path))
    assert str(path) in str(e.value)


def test_json_file_malformed(tmp_path):
    path = tmp_path / "words.json"
    path.write_text('{"positive": ["great"],\n "negative": }')
    with pytest.raises(DataError, match="not valid JSON") as e:
        Verbalizer.parse(LABELS, str(path))
    assert str(path) in str(e.value) and "line 2" in str(e.value)


@pytest.mark.parametrize("content", ['["great", "bad"]', '{"positive": 1}'])
def test_json_file_of_the_wrong_shape(tmp_path, content):
    path = tmp_path / "words.json"
    path.write_text(content)
    with pytest.raises(DataError) as e:
        Verbalizer.parse(LABELS, str(path))
    assert str(path) in str(e.value)


def test_words_for_a_label_not_in_the_data():
    with pytest.raises(DataError) as e:
        Verbalizer.parse(LABELS, "positive=great;neutral=meh")
    msg = str(e.value)
    assert "'neutral'" in msg
    assert "negative" in msg and "positive" in msg  # the labels the data has


@pytest.mark.parametrize("spec", ["positive", "positive=great;negative", "great|good"])
def test_bad_syntax(spec):
    with pytest.raises(DataError, match="is not label=word"):
        Verbalizer.parse(LABELS, spec)


@pytest.mark.parametrize("spec", ["positive=", "positive=great|", "positive= | good", "negative=bad;positive=  "])
def test_empty_word(spec):
    with pytest.raises(DataError, match="'positive' needs at least one non-empty word"):
        Verbalizer.parse(LABELS, spec)


def test_empty_word_in_json(tmp_path):
    path = tmp_path / "words.json"
    path.write_text(json.dumps({"positive": []}))
    with pytest.raises(DataError, match="'positive' needs at least one non-empty word"):
        Verbalizer.parse(LABELS, str(path))


def test_default_word_replaces_underscores():
    assert default_word("not_entailment") == "not entailment"
    assert default_word("sci_tech_") == "sci tech"
    assert default_word("_") == "_"  # never empty
    assert default_word("plain") == "plain"
    assert Verbalizer(["not_entailment"]).words == {"not_entailment": ["not entailment"]}


def test_no_labels_and_duplicate_labels():
    with pytest.raises(DataError, match="no labels"):
        Verbalizer([])
    with pytest.raises(DataError, match="duplicate labels"):
        Verbalizer(["a", "b", "a"])


def test_index_of_a_known_label():
    v = Verbalizer.parse(LABELS, None)
    assert v.index("negative") == 0 and v.index("positive") == 1


def test_index_of_an_unknown_label_names_it():
    v = Verbalizer.parse(LABELS, None)
    with pytest.raises(DataError) as e:
        v.index("neutral", "eval.jsonl, line 7")
    msg = str(e.value)
    assert msg.startswith("eval.jsonl, line 7: ")
    assert "'neutral'" in msg
    assert "negative, positive" in msg
    with pytest.raises(DataError, match="^label 'x'"):
        v.index("x")


def test_dict_round_trip():
    v = Verbalizer.parse(LABELS, "positive=great|good")
    v.calibration = [-0.5, -0.9]
    w = Verbalizer.from_dict(json.loads(json.dumps(v.to_dict())))
    assert w == v
