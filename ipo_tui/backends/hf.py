"""transformers on CUDA (bf16 where the GPU computes it, else fp16) or CPU (fp32).

Scoring runs the shared prefix once, then the suffixes on copies of its KV cache (one at a time
on a CPU, which gains nothing from batching but pays for padding; in batches on a GPU). The
last prefix's cache is kept: the next call evaluates only what its prefix does not share with it
(the system message and template head across prompts; everything but the edited candidate when
the same instruction is scored again).
Suffixes are left-padded *after* the prefix (padding masked out, positions continuing from the
prefix) so that every row ends at the last column and `logits_to_keep=1` computes one vocabulary
projection per candidate.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ipo_tui.backends.base import Backend, Capabilities, Sampling, common_length, plain_chat
from ipo_tui.errors import IpoError
from ipo_tui.models import ModelRef, materialize_gguf

DEFAULT_CTX = 4096
BATCH = {"cpu": 1, "cuda": 16}  # a CPU is compute-bound at any batch shape, so rows only add padding


class HFBackend(Backend):
    def __init__(self, model: ModelRef, device: str | None = None, dtype: str | None = None,
                 n_ctx: int | None = None, threads: int | None = None, adapter: str | None = None,
                 on_status=lambda msg: None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

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
        self.ref = model
        self.device = device
        trained_ctx = getattr(self.model.config, "max_position_embeddings", None) or DEFAULT_CTX
        self.capabilities = Capabilities(
            backend="hf", device=device, dtype=_short(torch_dtype), threads=torch.get_num_threads(),
            context_length=n_ctx or min(trained_ctx, DEFAULT_CTX), can_train=True, supports_lora=True,
        )
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self._prefix_ids: list[int] = []
        self._prefix_cache = None

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not self.tokenizer.chat_template:
            return plain_chat(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def last_logprobs(self, prefix: list[int], suffixes: list[list[int]], ids: list[int]) -> np.ndarray:
        torch = self._torch
        out = np.empty((len(suffixes), len(ids)), dtype=np.float32)
        index = torch.tensor(ids, device=self.device)
        with torch.inference_mode():
            cache = self._cache_for(prefix) if prefix else None
            order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))  # less padding per batch
            batch = BATCH["cpu" if self.device == "cpu" else "cuda"]
            for start in range(0, len(order), batch):
                rows = order[start:start + batch]
                logits = self._last_logits(prefix, [suffixes[i] for i in rows], cache)
                out[rows] = torch.log_softmax(logits.float(), dim=-1)[:, index].cpu().numpy()
        return out

    def _cache_for(self, prefix: list[int]):
        """The KV cache of `prefix`, computed from the kept one where they share a beginning."""
        kept = self._prefix_ids
        same = common_length(kept, prefix)
        if same == len(prefix) == len(kept):
            return self._prefix_cache
        cache = None
        if same and not getattr(self.model.config, "sliding_window", None):  # a window cannot be cropped back
            cache = copy.deepcopy(self._prefix_cache)
            cache.crop(same - len(kept))
            if same == len(prefix):  # the new prefix is a beginning of the kept one
                self._prefix_ids, self._prefix_cache = list(prefix), cache
                return cache
        else:
            same = 0
        rest = self._torch.tensor([prefix[same:]], device=self.device)
        cache = self.model(rest, past_key_values=cache, use_cache=True, logits_to_keep=1).past_key_values
        self._prefix_ids, self._prefix_cache = list(prefix), cache
        return cache

    def _last_logits(self, prefix, suffixes, cache):
        torch = self._torch
        n, width, p = len(suffixes), max(len(s) for s in suffixes), len(prefix)
        input_ids = torch.full((n, width), self._pad, dtype=torch.long)
        mask = torch.zeros((n, p + width), dtype=torch.long)
        mask[:, :p] = 1
        positions = torch.zeros((n, width), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            pad = width - len(suffix)
            input_ids[row, pad:] = torch.tensor(suffix)
            mask[row, p + pad:] = 1
            positions[row, pad:] = torch.arange(p, p + len(suffix))
        past = None
        if cache is not None:
            past = copy.deepcopy(cache)  # the forward pass appends to the cache it is given
            past.batch_repeat_interleave(n)
        result = self.model(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device), past_key_values=past, use_cache=past is not None,
            logits_to_keep=1,
        )
        return result.logits[:, -1, :]

    def generate(self, messages: list[dict[str, str]], sampling: Sampling) -> list[str]:
        torch = self._torch
        prompt = torch.tensor([self.tokenize(self.render_chat(messages))], device=self.device)
        torch.manual_seed(sampling.seed)
        sample = sampling.temperature > 0
        with torch.inference_mode():
            output = self.model.generate(
                prompt, attention_mask=torch.ones_like(prompt), do_sample=sample,
                temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
                max_new_tokens=sampling.max_tokens, num_return_sequences=sampling.n, pad_token_id=self._pad,
            )
        return self.tokenizer.batch_decode(output[:, prompt.shape[1]:], skip_special_tokens=True)

    def close(self) -> None:
        del self.model
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


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
