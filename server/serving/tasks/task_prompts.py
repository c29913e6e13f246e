"""Every prompt of /v1/summarize and /v1/translate, one PromptSet per model family.

    prompts = prompts_for(engine.model_config.model_type)          # "glm" family or the default one
    ids = render(engine, prompts, prompts.translate_user(text, "Chinese", "English", glossary))

Prompts are chat messages rendered through the checkpoint's own chat template
(engine.chat_template.encode), so they work for any served model. GLM checkpoints are Chinese-first
and follow Chinese instructions best; other families get English instructions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model import ChatTemplateError
from server.errors import bad_request

GLM_MODEL_TYPES = {"glm", "glm4", "chatglm"}


@dataclass(frozen=True)
class PromptSet:
    family: str
    system: str | None
    map_instruction: str       # {lang}: summarize one chunk of a long document
    reduce_instruction: str    # {lang}: merge partial summaries into one
    final_instruction: str     # {lang} {style} {length}: the answer the client sees
    styles: dict[str, str]     # paragraph | bullets | headline -> how to lay the answer out
    length_words: str          # {n}
    length_chars: str          # {n}
    translate_instruction: str  # {source} {target}
    glossary_intro: str
    text_label: str
    translate_layout: str       # {instruction} {source} {target} {text}: the user turn of a translation

    def _user(self, instruction: str, text: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": f"{instruction}\n\n{self.text_label}\n{text}"})
        return messages

    def summarize_map(self, text: str, lang: str) -> list[dict[str, Any]]:
        return self._user(self.map_instruction.format(lang=lang), text)

    def summarize_reduce(self, text: str, lang: str) -> list[dict[str, Any]]:
        return self._user(self.reduce_instruction.format(lang=lang), text)

    def summarize_final(self, text: str, lang: str, style: str, max_length: int | None, unit: str) -> list[dict[str, Any]]:
        length = ""
        if max_length is not None:
            length = (self.length_words if unit == "words" else self.length_chars).format(n=max_length)
        instruction = self.final_instruction.format(lang=lang, style=self.styles[style], length=length)
        return self._user(" ".join(instruction.split()), text)

    def translate(self, text: str, source: str, target: str, glossary: dict[str, str]) -> list[dict[str, Any]]:
        instruction = self.translate_instruction.format(source=source, target=target)
        if glossary:
            terms = "\n".join(f"- {src} -> {dst}" for src, dst in glossary.items())
            instruction += f"\n{self.glossary_intro}\n{terms}"
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        content = self.translate_layout.format(instruction=instruction, source=source, target=target, text=text)
        return messages + [{"role": "user", "content": content}]


DEFAULT_PROMPTS = PromptSet(
    family="default",
    system="You are a careful assistant that summarizes and translates text exactly as asked.",
    map_instruction="Summarize the main points of this part of a longer document in {lang}, in a few sentences.",
    reduce_instruction="These are summaries of consecutive parts of one document. Combine them into one "
                       "shorter summary in {lang} that keeps the main points in order.",
    final_instruction="Summarize the text below in {lang}. {style} {length}",
    styles={"paragraph": "Write one paragraph.",
            "bullets": "Write a bulleted list: one main point per line, each line starting with \"- \".",
            "headline": "Write only a short headline on one line, without a final period."},
    length_words="Use at most {n} words.",
    length_chars="Use at most {n} characters.",
    translate_instruction="Translate this {source} text into {target}. Reply with the translation only.",
    glossary_intro="Translate these terms exactly as given:",
    text_label="Text:",
    # "Chinese: ... / English:" makes small English-centric models answer in the target language
    # (measured on SmolLM2-135M: the plain instruction got the Chinese source copied back)
    translate_layout="{instruction}\n\n{source}: {text}\n{target}:",
)

GLM_PROMPTS = PromptSet(
    family="glm",
    system="你是一个严谨的助手，严格按照要求对文本进行摘要和翻译。",
    map_instruction="这是一篇长文档的一部分。请用{lang}用几句话概括其要点。",
    reduce_instruction="以下是同一文档各个连续部分的摘要。请用{lang}把它们合并成一份更短的摘要，按顺序保留要点。",
    final_instruction="请用{lang}概括下面的文本。{style}{length}",
    styles={"paragraph": "写成一段。", "bullets": "写成要点列表，每行一个要点，以“- ”开头。",
            "headline": "只写一行简短的标题，末尾不加句号。"},
    length_words="不超过{n}个词。",
    length_chars="不超过{n}个字。",
    translate_instruction="请把下面的文本从{source}翻译成{target}。只输出译文，保持原意、语气和换行。",
    glossary_intro="以下术语必须按给定译法翻译：",
    text_label="文本：",
    translate_layout="{instruction}\n\n{text}",
)

# language names as the GLM prompts write them
_GLM_NAMES = {"zh": "中文", "en": "英文", "ja": "日文", "ko": "韩文", "fr": "法文", "de": "德文", "es": "西班牙文",
              "ru": "俄文", "it": "意大利文", "pt": "葡萄牙文", "nl": "荷兰文", "ar": "阿拉伯文", "hi": "印地文",
              "th": "泰文", "el": "希腊文", "uk": "乌克兰文", "vi": "越南文"}


def prompts_for(model_type: str) -> PromptSet:
    return GLM_PROMPTS if model_type in GLM_MODEL_TYPES else DEFAULT_PROMPTS


def display_language(prompts: PromptSet, code: str, english_name: str) -> str:
    """How a prompt of this family names a language."""
    if prompts.family == "glm":
        return _GLM_NAMES.get(code, english_name)
    return english_name


def render(engine: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Prompt ids through the served checkpoint's chat template."""
    try:
        return engine.chat_template.encode(messages)
    except ChatTemplateError as e:  # a template without a system role, say: fold it into the user turn
        if messages and messages[0]["role"] == "system":
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            return engine.chat_template.encode(merged)
        raise bad_request(f"the model's chat template rejected the task prompt: {e}", code="template_error") from e
