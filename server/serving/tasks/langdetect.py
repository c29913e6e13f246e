"""Offline language identification for the task endpoints: script ranges first, then stopwords.

    detect_language("今天天气很好")   -> "zh"
    detect_language("Das ist gut.")   -> "de"
    normalize_language_code("zh-CN")  -> "zh"; unknown codes -> None

Scripts settle most languages at once (kana -> ja, Hangul -> ko, Cyrillic -> ru, Han alone -> zh).
Latin-script text is scored by how many of its words are frequent function words of each language,
plus letters only one language uses (ß, ñ, ç ...). No network, no model: it runs per request.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter

# code -> English name; the codes /v1/translate and /v1/summarize accept
LANGUAGE_NAMES: dict[str, str] = {
    "zh": "Chinese", "en": "English", "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German",
    "es": "Spanish", "ru": "Russian", "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "ar": "Arabic",
    "hi": "Hindi", "th": "Thai", "el": "Greek", "uk": "Ukrainian", "vi": "Vietnamese",
}
UNDETERMINED = "und"  # ISO 639 code for "no linguistic content" (digits, symbols only)

# aliases seen in the wild (BCP 47 tags, ISO 639-2, names)
_ALIASES = {"zh-hans": "zh", "zh-hant": "zh", "zh-cn": "zh", "zh-tw": "zh", "zh-hk": "zh", "cn": "zh",
            "chinese": "zh", "english": "en", "jp": "ja", "kr": "ko", "zho": "zh", "chi": "zh", "eng": "en",
            "jpn": "ja", "kor": "ko", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "spa": "es",
            "rus": "ru", "ita": "it", "por": "pt", "nld": "nl", "dut": "nl"}

_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the of and to in is that it for was on are with as be this by at from have not but "
                    "or an they which you his her we their has were been can will would there what all "
                    "its more when who also if into than these our how about she he my your me do does "
                    "did so up out just been being because should could over after".split()),
    "fr": frozenset("le la les de des du et est un une que qui dans pour pas sur au aux ce cette il elle "
                    "ne se sont avec plus par mais nous vous ils ont été leur son sa ses ou comme très "
                    "aussi être fait tout je tu on y en était avait ces mon ma mes ton notre votre "
                    "depuis jusqu où sans chez donc alors beaucoup merci".split()),
    "de": frozenset("der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch es "
                    "sie er wir ich wird werden sind hat haben aus bei nach wie noch über oder aber nur "
                    "einen einer kann du ihr mein dein unser schon sehr seit bis um wo heute morgen "
                    "diese dieser dieses war waren vielen".split()),
    "es": frozenset("el la los las de del y que en es un una por con para no se su sus al lo como más "
                    "pero muy está son ha fue este esta también hay sin sobre entre cuando porque todo "
                    "nos ya ella él ese esa eso yo tú mi tu hasta desde donde muchas muchos gracias "
                    "puede hace lleva está están".split()),
    "it": frozenset("il lo la gli le di del della che e è un una per non con sono si al nel alla anche "
                    "come più ma questo questa ha dei delle essere stato molto ci lui lei ogni sta "
                    "quel quella quello dello degli nella alle allo dal dalla io tu mio tuo suo noi voi "
                    "loro cosa fare grazie mille dove oggi domani".split()),
    "pt": frozenset("o a os as de do da dos das que e é um uma em no na para com não se por mais como mas "
                    "foi são ao aos também muito seu sua está isso ele ela nos eu você meu minha pelo "
                    "pela até onde obrigado obrigada há este esta essa esse fica".split()),
    "nl": frozenset("de het een en van is dat in op te niet zijn met voor er die ook aan als maar bij "
                    "om dan nog wordt werd heeft hebben naar uit door worden over ze wij ik".split()),
}
# letters and letter groups (lower case) typical of one Latin-script language; weight per occurrence
_MARKERS: dict[str, str] = {
    "ß": "de", "ä": "de", "ö": "de", "ü": "de", "sch": "de", "ung ": "de", "eit ": "de",
    "ñ": "es", "¿": "es", "¡": "es", "ción": "es", "ll": "es",
    "ç": "fr", "œ": "fr", "ê": "fr", "ë": "fr", "î": "fr", "û": "fr", "eau": "fr", "qu'": "fr", "l'": "fr",
    "ã": "pt", "õ": "pt", "ção": "pt", "nh": "pt", "lh": "pt",
    "ì": "it", "ò": "it", "zione": "it", "gli": "it", "cch": "it", "zz": "it", "ggi": "it",
    "th": "en", "wh": "en", "ing ": "en", "'s ": "en",
    "ij": "nl", "oo": "nl", "aa": "nl",
}
_MARKER_WEIGHT = 0.3
_VIETNAMESE = set("ươđạảếộờừữặẩẫậắằẳẵềểễệỉịọỏốồổỗớởỡợụủứửựỳỵỷỹ")
_UKRAINIAN = set("іїєґ")
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")


def normalize_language_code(code: str | None) -> str | None:
    """'zh-CN' / 'ZH' / 'zho' -> 'zh'; None for a code outside LANGUAGE_NAMES."""
    if not isinstance(code, str):
        return None
    key = code.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in LANGUAGE_NAMES and "-" in key:
        key = _ALIASES.get(key.split("-")[0], key.split("-")[0])
    return key if key in LANGUAGE_NAMES else None


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, "the same language as the input")


def _script(ch: str) -> str | None:
    o = ord(ch)
    if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F:
        return "kana"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
        return "hangul"
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F:
        return "han"
    if 0x0400 <= o <= 0x04FF:
        return "cyrillic"
    if 0x0600 <= o <= 0x06FF or 0x0750 <= o <= 0x077F:
        return "arabic"
    if 0x0900 <= o <= 0x097F:
        return "devanagari"
    if 0x0E00 <= o <= 0x0E7F:
        return "thai"
    if 0x0370 <= o <= 0x03FF:
        return "greek"
    if ch.isalpha() and (o < 0x0250 or 0x1E00 <= o <= 0x1EFF):
        return "latin"
    return None


def script_counts(text: str) -> Counter[str]:
    return Counter(s for s in map(_script, text) if s is not None)


def _from_scripts(counts: Counter[str], text: str) -> str | None:
    """The language the scripts alone decide, or None when the text is (mostly) Latin."""
    total = sum(counts.values())
    if total == 0:
        return UNDETERMINED
    if counts["kana"] >= max(2, 0.05 * total) or (counts["kana"] and counts["kana"] >= counts["han"] * 0.1):
        return "ja"  # Japanese mixes kanji with kana; Chinese has no kana
    if counts["hangul"] >= 0.2 * total:
        return "ko"
    cjk = counts["han"]
    if cjk >= 0.2 * total or (cjk and cjk >= counts["latin"] / 4):
        return "zh"  # each Han character carries about a word, so a few outweigh many Latin letters
    simple = {"cyrillic": "ru", "arabic": "ar", "devanagari": "hi", "thai": "th", "greek": "el"}
    script, n = max(((s, counts[s]) for s in simple), key=lambda x: x[1])
    if n >= 0.3 * total:
        if script == "cyrillic" and any(c in _UKRAINIAN for c in text.lower()):
            return "uk"
        return simple[script]
    return None


def _latin_language(text: str) -> str:
    lowered = text.lower()
    words = _WORD.findall(lowered)
    scores: dict[str, float] = {lang: 0.0 for lang in _STOPWORDS}
    for word in words:
        for lang, stops in _STOPWORDS.items():
            if word in stops:
                scores[lang] += 1.0
    if sum(lowered.count(c) for c in _VIETNAMESE) >= 3:
        return "vi"  # these letters exist in no other language here
    padded = " ".join(words) + " "
    for marker, lang in _MARKERS.items():
        scores[lang] += _MARKER_WEIGHT * padded.count(marker)
    best = max(scores, key=lambda lang: scores[lang])
    if scores[best] == 0.0:
        # no function word at all (a title, a list of names): English is the likeliest Latin text here
        return "en"
    return best


def detect_language(text: str, sample_chars: int = 4000) -> str:
    """Best guess among LANGUAGE_NAMES, or 'und' for text without letters. Reads a sample of the
    start, middle and end so a 200,000-character input costs the same as a short one."""
    if len(text) > sample_chars:
        third = sample_chars // 3
        mid = len(text) // 2
        text = text[:third] + " " + text[mid - third // 2: mid + third // 2] + " " + text[-third:]
    text = unicodedata.normalize("NFC", text)
    by_script = _from_scripts(script_counts(text), text)
    return by_script if by_script is not None else _latin_language(text)
