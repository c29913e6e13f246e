"""Quality metrics of `glmserve eval`: ROUGE-L (implemented here), chrF and BLEU (sacrebleu).

    rouge_l("the cat sat", "the cat sat down")          -> {"precision": 1.0, "recall": 0.75, "f": 0.857...}
    rouge_l("今天天气很好", "今天天气不错")               # Chinese is compared character by character
    translation_scores(["Hello."], ["Hi."], "en")       -> {"bleu": ..., "chrf": ...}

ROUGE-L (Lin, 2004) is the F-measure of the longest common subsequence of tokens. Tokens are
lower-cased words for alphabetic scripts and single characters for Chinese, Japanese and Korean,
whose words are not space-separated; punctuation is dropped.
"""
from __future__ import annotations

import re
from typing import Any

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:['’][^\W_{_CJK}]+)*")
_LENGTH_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
CJK_LANGS = {"zh", "ja", "ko"}


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence by dynamic programming over one row: O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            prev_row_j = row[j]
            row[j] = prev_diag + 1 if x == y else max(row[j], row[j - 1])
            prev_diag = prev_row_j
    return row[-1]


def rouge_l(prediction: str, reference: str) -> dict[str, float]:
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return {"precision": 0.0, "recall": 0.0, "f": 0.0}
    lcs = lcs_length(pred, ref)
    precision, recall = lcs / len(pred), lcs / len(ref)
    f = 0.0 if lcs == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f": f}


def count_length(text: str, unit: str) -> int:
    """The server's definition: words (a CJK character is one) or non-space characters."""
    if unit == "chars":
        return sum(1 for c in text if not c.isspace())
    return len(_LENGTH_WORD.findall(text))


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError as e:  # an optional dependency: only translation scoring needs it
        raise SystemExit("glmserve eval translate needs sacrebleu: pip install 'glmserve[eval]'") from e
    return sacrebleu


def bleu_tokenizer(target_lang: str) -> str:
    """sacrebleu's tokenizer for the target language: Chinese by character, Japanese and Korean
    through their own tokenizers when installed (else by character too), 13a for the rest."""
    return {"zh": "zh", "ja": "char", "ko": "char"}.get(target_lang, "13a")


def translation_scores(predictions: list[str], references: list[str], target_lang: str) -> dict[str, float]:
    """Corpus BLEU and chrF over one target language."""
    sb = _sacrebleu()
    bleu = sb.corpus_bleu(predictions, [references], tokenize=bleu_tokenizer(target_lang))
    chrf = sb.corpus_chrf(predictions, [references])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}


def sentence_scores(prediction: str, reference: str, target_lang: str) -> dict[str, float]:
    sb = _sacrebleu()
    bleu = sb.sentence_bleu(prediction, [reference], tokenize=bleu_tokenizer(target_lang))
    chrf = sb.sentence_chrf(prediction, [reference])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}
