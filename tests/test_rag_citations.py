"""rag ask cites its passages: numbers the model wrote are kept when they name a retrieved passage, else the
answer is attributed to the passages that hold its words (issue 18, section 3: answers never cited)."""

from prompttune.rag.citations import cite

PASSAGES = [
    "The Eiffel Tower is in Paris and was finished in 1889.",
    "Berlin is the capital of Germany.",
    "Paris has many museums, the Louvre among them.",
]


def test_the_models_own_citations_are_kept_and_unknown_numbers_dropped():
    c = cite("Berlin [2] is the capital [9].", PASSAGES)
    assert (c.text, c.citations, c.cited_by) == ("Berlin [2] is the capital.", [2], "model")
    assert cite("Paris [1][3][1]", PASSAGES).citations == [1, 3]


def test_an_answer_without_citations_is_attributed_by_its_words():
    c = cite("It was finished in 1889 in Paris.", PASSAGES)
    assert (c.text, c.citations, c.cited_by) == ("It was finished in 1889 in Paris. [1]", [1], "overlap")
    c = cite("The capital of Germany is Berlin [7].", PASSAGES)  # a number that names no passage: attributed
    assert (c.text, c.citations, c.cited_by) == ("The capital of Germany is Berlin. [2]", [2], "overlap")


def test_an_answer_from_no_passage_cites_nothing():
    for answer in ("I don't know.", "Bananas are yellow fruit.", ""):
        c = cite(answer, PASSAGES)
        assert c.citations == [] and c.cited_by is None and c.text == answer
