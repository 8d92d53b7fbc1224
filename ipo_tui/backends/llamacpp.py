"""llama-cpp-python on a GGUF file.

Scoring keeps the evaluated tokens in the context's KV cache between calls: a prefix already
there is not evaluated again, and each suffix is evaluated after it with logits for its last
position only (no `logits_all`), read with `llama_get_logits_ith(ctx, -1)`.

Precision: llama.cpp multiplies quantized weights with 8-bit activations, which moves a small
model's p'yes by up to 0.06. With `score_precision="auto"`, a quantized model small enough that a
full-precision F32 copy of its weights costs little memory (F32_COPY_MAX_PARAMS parameters, 4 bytes
each, and at most an eighth of the machine's memory) is scored from that copy (also faster at
prompt processing on CPU), while generation keeps the quantized file's speed.

Text: rendered and tokenized by `GGUFText`, the same code the hf backend uses for a GGUF model.
Loading goes through `llama_runtime` (weight repacking as this CPU allows, a quiet engine log).

Adapters: `adapter` is a GGUF LoRA file or a PEFT adapter folder, which is converted once into
the user cache (gguf-lora/) and applied to both instances, the generating and the scoring one.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from pathlib import Path

import numpy as np

from ipo_tui import config
from ipo_tui.backends import llama_runtime
from ipo_tui.backends.base import (
    Backend,
    Capabilities,
    Sampling,
    common_length,
    log_normalizer,
    next_token_logprobs,
    sample_seed,
)
from ipo_tui.backends.gguf_text import GGUFText
from ipo_tui.backends.weights import (
    ModelRef,
    dequantized_gguf,
    gguf_metadata,
    gguf_parameter_count,
    info,
    is_gguf,
)
from ipo_tui.errors import IpoError

DEFAULT_CTX = 4096
F32_COPY_MAX_PARAMS = 400_000_000  # 1.6 GB in F32: the embedded 135M model and Gemma 3 270M, not Qwen 0.5B
_FULL_PRECISION = {0, 1, 32}  # general.file_type of F32, F16, BF16 files


class LlamaCppBackend(Backend):
    def __init__(self, model: ModelRef, device: str | None = None, dtype: str | None = None,
                 n_ctx: int | None = None, threads: int | None = None, score_precision: str = "auto",
                 adapter: str | None = None, on_status=lambda msg: None):
        if model.kind != "gguf":
            raise IpoError(f"the llamacpp backend needs a GGUF file; {model.location} is not one (use --backend hf)")
        if dtype not in (None, "auto"):
            raise IpoError("--dtype applies to the hf backend; llamacpp computes in the GGUF's own types")
        llama_cpp = llama_runtime.engine()
        self._llama_cpp = llama_cpp
        trained_ctx = info(model).context_length or DEFAULT_CTX
        n_ctx = n_ctx or min(trained_ctx, DEFAULT_CTX)
        threads = threads or max(1, (os.cpu_count() or 2))
        gpu = device not in (None, "cpu", "auto") and llama_cpp.llama_supports_gpu_offload()
        if device not in (None, "cpu", "auto") and not gpu:
            raise IpoError(f"--device {device}: this llama-cpp-python build has no GPU support; use --device cpu")
        if score_precision not in ("auto", "native", "f32"):
            raise IpoError(f"--score-precision {score_precision}: choose auto, native or f32")
        quantized = gguf_metadata(model.path).get("general.file_type") not in _FULL_PRECISION
        if score_precision == "auto":
            score_precision = "f32" if quantized and f32_copy_is_cheap(model.path) else "native"
        adapter_path = Path(adapter).expanduser().resolve() if adapter else None
        lora = _lora_file(adapter_path, model, on_status) if adapter_path else None
        on_status(f"loading {model.name} with llama.cpp")
        self._generator = _load(model.path, n_ctx, threads, gpu, lora)
        self.llm = self._generator  # the instance that scores
        if score_precision == "f32" and quantized:
            self.llm = _load(dequantized_gguf(model.path, on_status), n_ctx, threads, gpu, lora)
        # llama_cpp's own __del__ fails at interpreter exit; close while the module still exists
        self._finalizer = weakref.finalize(self, _close_all, {self.llm, self._generator})
        self.ref = model
        self.adapter = str(adapter_path) if adapter_path else ""  # what candidates made with it record
        file_type = _file_type(self._generator)
        if self.llm is not self._generator:
            file_type += " (scores in f32)"
        if not llama_runtime.repack_decision()[0] and not gpu:
            file_type += ", no repacking"
        self.capabilities = Capabilities(
            backend="llamacpp", device="gpu" if gpu else "cpu", dtype=file_type, threads=threads,
            context_length=n_ctx, can_train=False, supports_lora=True,
        )
        self.text = GGUFText(self.llm)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.text.render_chat(messages)

    def tokenize(self, text: str) -> list[int]:
        return self.text.tokenize(text)

    def detokenize(self, ids: list[int]) -> str:
        return self.text.detokenize(ids)

    def last_logprobs(self, prefix: list[int], suffixes: list[list[int]], ids: list[int]) -> np.ndarray:
        llm = self.llm
        self._check_fits(prefix, suffixes)
        self._keep_cached(prefix)
        vocab = llm.n_vocab()
        out = np.empty((len(suffixes), len(ids)), dtype=np.float32)
        for row, suffix in enumerate(suffixes):
            llm.n_tokens = len(prefix)  # eval() drops the KV cache past this point first
            llm.eval(suffix)
            logits = np.ctypeslib.as_array(self._llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
            out[row] = logits[ids] - log_normalizer(logits)
        return out

    def sequence_logprobs(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        """Each suffix is evaluated after the cached prefix with logits at every position (a batch
        that asks for them, not a `logits_all` context), the prefix's last token evaluated again
        with it so that its logits predict the suffix's first token."""
        llm = self.llm
        self._check_fits(prefix, suffixes)
        head = prefix[:-1]
        self._keep_cached(head)
        vocab = llm.n_vocab()
        out = np.zeros(len(suffixes))
        for row, suffix in enumerate(suffixes):
            fed = [prefix[-1], *suffix[:-1]]  # the logits after fed[i] predict suffix[i]
            llm.n_tokens = len(head)
            llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
            for at in range(0, len(fed), llm.n_batch):
                chunk = fed[at:at + llm.n_batch]
                llm._batch.set_batch(batch=chunk, n_past=llm.n_tokens, logits_all=True)
                llm._ctx.decode(llm._batch)
                llm.input_ids[llm.n_tokens:llm.n_tokens + len(chunk)] = chunk
                llm.n_tokens += len(chunk)
                logits = np.ctypeslib.as_array(self._llama_cpp.llama_get_logits(llm.ctx), shape=(len(chunk), vocab))
                out[row] += next_token_logprobs(logits, suffix[at:at + len(chunk)]).sum()
        return out

    def _check_fits(self, prefix: list[int], suffixes: list[list[int]]) -> None:
        too_long = max(len(prefix) + len(s) for s in suffixes)
        if too_long > self.capabilities.context_length:
            raise IpoError(f"{too_long} tokens do not fit the context of {self.capabilities.context_length}; raise --ctx")

    def _keep_cached(self, prefix: list[int]) -> None:
        """Evaluate only the part of `prefix` that the KV cache does not already hold."""
        llm = self.llm
        same = common_length(llm.input_ids[: llm.n_tokens].tolist(), prefix)
        llm.n_tokens = same
        if same < len(prefix):
            llm.eval(prefix[same:])

    def generate(self, messages: list[dict[str, str]], sampling: Sampling) -> list[str]:
        prompt = self.prompt_ids(messages, sampling.max_tokens)
        outputs = []
        for i in range(sampling.n):
            self._hold_all_but_last(prompt)
            result = self._generator.create_completion(
                prompt=prompt, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                top_p=sampling.top_p, seed=sample_seed(sampling.seed, i),
            )
            outputs.append(result["choices"][0]["text"])
        return outputs

    def _hold_all_but_last(self, prompt: list[int]) -> None:
        """Leave the generator's KV cache holding all of `prompt` but its last token, which
        create_completion then evaluates alone. Its logits come out the same whatever was cached
        before (a batch of one token computes them differently from a longer batch), so a seed
        draws the same sample in a fresh run, a resumed one and a repeated call."""
        llm = self._generator
        same = common_length(llm.input_ids[: llm.n_tokens].tolist(), prompt[:-1])
        llm.n_tokens = same
        if same < len(prompt) - 1:
            llm.eval(prompt[same:-1])

    def close(self) -> None:
        self._finalizer()


def _lora_file(adapter: Path, model: ModelRef, on_status) -> Path:
    """The GGUF LoRA file for `adapter`: the file itself, or a PEFT folder's conversion (made once)."""
    if adapter.is_dir():
        from ipo_tui.training.export import cache_key, peft_to_gguf_lora

        target = config.cache_dir() / "gguf-lora" / f"{cache_key(adapter, model)}.gguf"
        if not target.is_file():
            on_status(f"converting adapter {adapter} to GGUF (once)")
            peft_to_gguf_lora(adapter, target, base=model)
        return target
    if not adapter.is_file():
        raise IpoError(f"adapter {adapter} not found: give a PEFT adapter folder or a GGUF LoRA file")
    if not is_gguf(adapter) or gguf_metadata(adapter).get("general.type") != "adapter":
        raise IpoError(f"{adapter} is not a GGUF LoRA adapter: give a PEFT adapter folder or a GGUF LoRA file")
    return adapter


def f32_copy_is_cheap(path: Path) -> bool:
    """Whether an F32 copy of the weights (4 bytes a parameter) fits the budget of the module doc."""
    size = 4 * gguf_parameter_count(path)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return size <= 4 * F32_COPY_MAX_PARAMS and size <= memory // 8


def _load(path, n_ctx: int, threads: int, gpu: bool, lora: Path | None = None):
    llm = llama_runtime.load(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                             n_gpu_layers=-1 if gpu else 0, logits_all=False)
    if lora:
        _apply_lora(llm, lora, path)
    return llm


def _apply_lora(llm, lora: Path, path) -> None:
    """Apply a GGUF LoRA to llm's context through the C API. Llama(lora_path=...) misses a refused
    adapter (it compares a NULL ctypes pointer with None, then runs with it) and turns mmap off.
    The adapter is freed with the model. llama.cpp says why it refuses an adapter only in its log."""
    llama_cpp = llama_runtime.engine()
    with llama_runtime.listen() as log:
        adapter = llama_cpp.llama_adapter_lora_init(llm.model, str(lora).encode())
    if not adapter:
        llm.close()
        refusal = [line for line in "".join(log).splitlines() if "failed to apply lora adapter: " in line]
        reason = refusal[-1].split("failed to apply lora adapter: ")[-1] if refusal else "it was refused"
        raise IpoError(f"llama.cpp could not apply adapter {lora} to {path}: {reason}")
    if llama_cpp.llama_set_adapters_lora(llm.ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                                         (ctypes.c_float * 1)(1.0)):
        llm.close()
        raise IpoError(f"llama.cpp could not set adapter {lora} on its context for {path}")


def _close_all(instances) -> None:
    for llm in instances:
        llm.close()


def _file_type(llm) -> str:
    ftype = llm.metadata.get("general.file_type")
    names = {"0": "f32", "1": "f16", "2": "q4_0", "3": "q4_1", "7": "q8_0", "8": "q5_0", "9": "q5_1",
             "10": "q2_k", "11": "q3_k_s", "14": "q4_k_s", "15": "q4_k_m", "17": "q5_k_m", "18": "q6_k", "32": "bf16"}
    return names.get(str(ftype), f"gguf type {ftype}")
