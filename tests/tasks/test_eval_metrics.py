"""ROUGE-L (our implementation, checked against hand-computed LCS values) and sacrebleu wiring."""
from __future__ import annotations

import pytest

from clients.eval_metrics import count_length, lcs_length, rouge_l, rouge_tokens, translation_scores


def test_lcs_of_known_sequences() -> None:
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example (CLRS 15.4)
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(["a", "b"], ["a", "b"]) == 2


def test_rouge_l_f_measure_by_hand() -> None:
    # pred: the cat sat on the mat (6), ref: the cat is on the mat (6); LCS = the cat on the mat (5)
    score = rouge_l("The cat sat on the mat.", "the cat is on the mat")
    assert score["precision"] == pytest.approx(5 / 6)
    assert score["recall"] == pytest.approx(5 / 6)
    assert score["f"] == pytest.approx(5 / 6)


def test_chinese_is_compared_by_character() -> None:
    assert rouge_tokens("今天天气，很好") == ["今", "天", "天", "气", "很", "好"]
    score = rouge_l("今天天气很好", "今天天气不错")  # LCS 今天天气 = 4 of 6
    assert score["f"] == pytest.approx(4 / 6)


def test_no_overlap_and_empty_prediction_score_zero() -> None:
    assert rouge_l("alpha beta", "gamma delta")["f"] == 0.0
    assert rouge_l("", "gamma delta")["f"] == 0.0


def test_length_units_match_the_server() -> None:
    from server.serving.tasks.length_control import count_length as server_count

    for text in ("The cat sat.", "今天 天气很好。", "Mixed 中文 text, 42."):
        for unit in ("words", "chars"):
            assert count_length(text, unit) == server_count(text, unit)


def test_translation_scores_use_sacrebleu() -> None:
    perfect = translation_scores(["The weather is nice today."], ["The weather is nice today."], "en")
    assert perfect == {"bleu": 100.0, "chrf": 100.0}
    zh = translation_scores(["今天天气很好"], ["今天天气不错"], "zh")
    assert 0 < zh["bleu"] < 100 and 0 < zh["chrf"] < 100
