"""transformers on CUDA (bf16 where the GPU computes it, else fp16) or CPU (fp32).

Scoring packs a prompt's candidates into one sequence: the part of the shared prefix not yet in
the kept KV cache, then every suffix, with a block mask under which each suffix sees the prefix
and itself only, and positions that restart after the prefix for each suffix. One forward pass
then scores them all, with no padding and no copies of the cache, and `logits_to_keep` computes
one vocabulary projection per candidate (at each suffix's last token). Afterwards the cache is
cropped back to the prefix and kept: the next call evaluates only what its prefix does not share
with it (the system message and template head across prompts; everything but the edited
candidate when the same instruction is scored again).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ipo_tui import verbosity
from ipo_tui.backends.base import (
    Backend,
    Capabilities,
    Sampling,
    common_length,
    plain_chat,
    sample_seed,
)
from ipo_tui.backends.weights import ModelRef, materialize_gguf
from ipo_tui.errors import IpoError

DEFAULT_CTX = 4096
GENERATE_ROWS = {"cpu": 16, "cuda": 64}  # CPU, embedded model: 14 tokens/s at 1 row, 28 at 4, 79 at 16
PACK_TOKENS = 2048  # suffix tokens per forward pass at most: the block mask grows with its square


class HFBackend(Backend):
    def __init__(self, model: ModelRef, device: str | None = None, dtype: str | None = None,
                 n_ctx: int | None = None, threads: int | None = None, adapter: str | None = None,
                 on_status=lambda msg: None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        verbosity.quiet_transformers()
        self._torch = torch
        device = device if device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise IpoError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
        dtype = dtype if dtype not in (None, "auto") else _native_dtype(torch, device)
        torch_dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                       "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}.get(dtype)
        if torch_dtype is None:
            raise IpoError(f"--dtype {dtype}: choose fp32, bf16 or fp16")
        if threads:
            torch.set_num_threads(threads)
        on_status(f"loading {model.name} with transformers on {device} ({_short(torch_dtype)})")
        try:
            source = str(materialize_gguf(model.path, on_status)) if model.kind == "gguf" else model.location
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).to(device).eval()
        except (OSError, ValueError) as exc:  # a missing hub, an unsupported architecture
            first = str(exc).strip().splitlines()[0]
            raise IpoError(f"could not load {model.location}: {first}") from None
        if adapter:
            self.model, self.adapter = _with_adapter(self.model, adapter), str(Path(adapter).resolve())
        self._gguf_text = None
        if model.kind == "gguf":  # the GGUF's own vocabulary, so that llamacpp sees the same tokens
            from ipo_tui.backends.gguf_text import GGUFText

            self._gguf_text = GGUFText.open(model.path)
        self.ref = model
        self.device = device
        self.generate_rows = GENERATE_ROWS["cpu" if device == "cpu" else "cuda"]
        trained_ctx = getattr(self.model.config, "max_position_embeddings", None) or DEFAULT_CTX
        self.capabilities = Capabilities(
            backend="hf", device=device, dtype=_short(torch_dtype), threads=torch.get_num_threads(),
            context_length=n_ctx or min(trained_ctx, DEFAULT_CTX), can_train=True, supports_lora=True,
        )
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self._prefix_ids: list[int] = []
        self._prefix_cache = None

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self._gguf_text:
            return self._gguf_text.render_chat(messages)
        if not self.tokenizer.chat_template:
            return plain_chat(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def tokenize(self, text: str) -> list[int]:
        if self._gguf_text:
            return self._gguf_text.tokenize(text)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        if self._gguf_text:
            return self._gguf_text.detokenize(ids)
        return self.tokenizer.decode(ids)

    def last_logprobs(self, prefix: list[int], suffixes: list[list[int]], ids: list[int]) -> np.ndarray:
        torch = self._torch
        index = torch.tensor(ids, device=self.device)
        rows = []
        with torch.inference_mode():
            for pack in _packs(suffixes, PACK_TOKENS):
                logits = self._packed_logits(prefix, pack)
                rows.append(torch.log_softmax(logits.float(), dim=-1)[:, index].cpu().numpy())
        return np.concatenate(rows)

    def sequence_logprobs(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        """The packed pass of `last_logprobs` with logits at every position; the prefix's last token
        goes with each suffix so that its logits predict the suffix's first token. Fewer tokens a
        pack, as each keeps a vocabulary's worth of logits per token."""
        torch = self._torch
        head, fed = prefix[:-1], [[prefix[-1], *s[:-1]] for s in suffixes]
        out = []
        with torch.inference_mode():
            for pack, targets in zip(_packs(fed, PACK_TOKENS // 8), _packs(suffixes, PACK_TOKENS // 8)):
                logits = torch.log_softmax(self._packed_logits(head, pack, every=True).float(), dim=-1)
                picked = logits[torch.arange(logits.shape[0]), torch.tensor([t for s in targets for t in s])]
                out += [float(part.sum()) for part in picked.split([len(s) for s in targets])]
        return np.array(out)

    def _packed_logits(self, prefix: list[int], suffixes: list[list[int]], every: bool = False):
        """Next-token logits after prefix + each suffix (with `every`, after each of its tokens, in
        order), from one forward pass (see the module doc)."""
        torch = self._torch
        cache, cached = self._take_cache(prefix)
        rest = prefix[cached:]
        ids = rest + [t for suffix in suffixes for t in suffix]
        width, r, p = len(ids), len(rest), len(prefix)
        allowed = torch.zeros((width, cached + width), dtype=torch.bool)
        allowed[:, :cached] = True
        allowed[:r, cached:cached + r] = torch.ones(r, r, dtype=torch.bool).tril()
        positions, kept, at = list(range(cached, p)), [], r
        for suffix in suffixes:
            n = len(suffix)
            allowed[at:at + n, cached:cached + r] = True
            allowed[at:at + n, cached + at:cached + at + n] = torch.ones(n, n, dtype=torch.bool).tril()
            positions += range(p, p + n)
            kept += range(at, at + n) if every else [at + n - 1]
            at += n
        result = self.model(
            input_ids=torch.tensor([ids], device=self.device), attention_mask=allowed[None, None].to(self.device),
            position_ids=torch.tensor([positions], device=self.device), cache=cache, use_cache=True,
            logits_to_keep=torch.tensor(kept, device=self.device),
        )
        config = self.model.config  # a sliding window's cache cannot be cropped back (Qwen2 names one it does not use)
        if not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)):
            cache = result.cache
            _crop(cache, p)
            self._prefix_ids, self._prefix_cache = list(prefix), cache
        return result.logits[0]

    def _take_cache(self, prefix: list[int]):
        """The kept cache cropped to what it shares with `prefix`, and that length; (None, 0) when
        nothing is shared. The kept cache is given away: the forward pass appends to it."""
        cache, same = self._prefix_cache, common_length(self._prefix_ids, prefix)
        self._prefix_ids, self._prefix_cache = [], None  # until the pass succeeds and keeps its own
        if cache is None or same == 0:
            return None, 0
        _crop(cache, same)
        return cache, same

    def generate(self, messages: list[dict[str, str]], sampling: Sampling) -> list[str]:
        return self.generate_many([(messages, sampling)])[0]

    def generate_many(self, requests: list[tuple[list[dict[str, str]], Sampling]]) -> list[list[str]]:
        """Every request's samples as the rows of one batch (prompts left-padded), seeded with the
        first request's seed. A decoding step costs about the same for 1 row as for several
        (the weights are read once per step), so rows are nearly free up to `generate_rows`."""
        torch = self._torch
        first = requests[0][1]
        prompts = [self.prompt_ids(messages, sampling.max_tokens) for messages, sampling in requests]
        rows = [ids for ids, (_, sampling) in zip(prompts, requests) for _ in range(sampling.n)]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        torch.manual_seed(sample_seed(first.seed))
        sample = first.temperature > 0
        with torch.inference_mode():
            output = self.model.generate(
                input_ids.to(self.device), attention_mask=mask.to(self.device), do_sample=sample,
                temperature=first.temperature if sample else None, top_p=first.top_p if sample else None,
                max_new_tokens=first.max_tokens, pad_token_id=self._pad,
            )
        stops = {self._pad, *_ids(self.model.generation_config.eos_token_id)}
        texts = [self._decode_answer(row.tolist(), stops) for row in output[:, width:]]
        result, at = [], 0
        for _, sampling in requests:
            result.append(texts[at:at + sampling.n])
            at += sampling.n
        return result

    def _decode_answer(self, ids: list[int], stops: set[int]) -> str:
        """An answer's text: its tokens up to the first end-of-turn or padding token."""
        end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        if self._gguf_text:
            return self._gguf_text.detokenize(ids[:end])
        return self.tokenizer.decode(ids[:end], skip_special_tokens=True)

    def close(self) -> None:
        if self._gguf_text:
            self._gguf_text.close()
        del self.model
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


def _crop(cache, length: int) -> None:
    """Keep the first `length` tokens of `cache` (transformers takes the number to drop)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _ids(value) -> list[int]:
    """A generation config's token id setting (None, one id or several) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _packs(suffixes: list[list[int]], limit: int):
    """Consecutive groups of suffixes of at most `limit` tokens in all (a longer suffix alone)."""
    pack, size = [], 0
    for suffix in suffixes:
        if pack and size + len(suffix) > limit:
            yield pack
            pack, size = [], 0
        pack.append(suffix)
        size += len(suffix)
    if pack:
        yield pack


def _with_adapter(model, adapter: str):
    """The model with a PEFT LoRA adapter applied (kept separate, so the base weights stay as they are)."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise IpoError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json); "
                       "give a run's adapter folder, e.g. runs/dpo-001/adapter")
    try:
        return PeftModel.from_pretrained(model, adapter).eval()
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names of another model
        first = str(exc).strip().splitlines()[0][:200]
        raise IpoError(f"adapter {adapter} does not fit this model: {first}") from None


def _native_dtype(torch, device: str) -> str:
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPUs without native bf16 run it ~10x slower (DESIGN.md)


def _short(torch_dtype) -> str:
    return str(torch_dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16").replace("float16", "fp16")
