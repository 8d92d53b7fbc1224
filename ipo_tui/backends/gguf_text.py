"""One text, one set of tokens: a GGUF model's chat template and vocabulary as llama.cpp reads them.

Both local backends render and tokenize a GGUF model's text here, so the same text gives the same
token ids, and the same p'yes, on either (the tokenizer transformers converts from a GGUF splits
some strings differently from llama.cpp's).
"""

from __future__ import annotations

from ipo_tui.backends import llama_runtime
from ipo_tui.backends.base import plain_chat


class GGUFText:
    def __init__(self, llm):
        """`llm`: a llama_cpp.Llama, a full model or one loaded with vocab_only=True."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llm
        template = llm.metadata.get("tokenizer.chat_template")
        self._formatter = None
        if template:
            vocab = llm._model
            self._formatter = Jinja2ChatFormatter(
                template=template, bos_token=vocab.token_get_text(llm.token_bos()),
                eos_token=vocab.token_get_text(llm.token_eos()), add_generation_prompt=True,
            )

    @classmethod
    def open(cls, path) -> GGUFText:
        """The vocabulary and template of the GGUF file at `path`, without its weights."""
        return cls(llama_runtime.load(path, vocab_only=True))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self._formatter is None:
            return plain_chat(messages)
        return self._formatter(messages=messages).prompt

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def close(self) -> None:
        self.llm.close()
