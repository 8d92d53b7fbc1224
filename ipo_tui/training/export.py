"""Trained PEFT LoRA adapters out to the engines: a GGUF LoRA file for llama.cpp, or a merged checkpoint.

What llama.cpp's adapter loader checks (llama-adapter.cpp): general.type "adapter", adapter.type
"lora", general.architecture equal to the model's, and for each adapted weight W a pair
`<W's GGUF name>.lora_a` (PEFT's A, rank x in) and `.lora_b` (PEFT's B, out x rank). It adds
adapter.lora.alpha / rank * B A x to W x, which is PEFT's own scaling.

torch, peft, transformers, gguf and safetensors are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ipo_tui import verbosity
from ipo_tui.backends import weights
from ipo_tui.backends.weights import ModelRef
from ipo_tui.errors import IpoError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# HF architectures whose linear weights llama.cpp's converter only renames (plus the q/k permutation
# below), keyed to the GGUF architecture it gives them.
GGUF_ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
             "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
# convert_hf_to_gguf reorders the rows of q/k weights of these archs for llama.cpp's RoPE layout
# (LlamaModel.permute); a LoRA B must have its rows reordered the same way.
_PERMUTES_QK = {"llama"}
_FORMAT = 1  # bump when the conversion changes, so cached conversions are redone
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class BaseShape:
    """What the conversion needs to know of the base model."""

    arch: str
    blocks: int
    heads: int
    kv_heads: int


def adapter_config(adapter_dir: Path) -> dict:
    """The adapter's config, after checking the folder holds a PEFT LoRA adapter."""
    if not adapter_dir.is_dir():
        what = "is not a folder" if adapter_dir.exists() else "not found"
        raise IpoError(f"adapter folder {adapter_dir} {what}: give the folder PEFT's save_pretrained wrote")
    config_file, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        raise IpoError(f"{adapter_dir} is not a PEFT adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise IpoError(f"{config_file}: not valid JSON (line {exc.lineno})") from None
    if config.get("peft_type") != "LORA":
        raise IpoError(f"{adapter_dir} is not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    return config


def base_shape(adapter_dir: Path, config: dict, base: ModelRef | None = None) -> BaseShape:
    """Architecture, block and head counts of `base`, or else of the adapter's base_model_name_or_path."""
    ref = base or _adapter_base(adapter_dir, config)
    if ref.kind == "gguf":
        meta = weights.gguf_metadata(ref.path)
        arch = meta.get("general.architecture")
        if arch not in GGUF_ARCH.values():
            raise IpoError(f"{ref.location}: architecture {arch!r} is not supported for GGUF LoRA export "
                           f"(supported: {', '.join(sorted(set(GGUF_ARCH.values())))})")
        heads = meta[f"{arch}.attention.head_count"]
        return BaseShape(arch, meta[f"{arch}.block_count"], heads, meta.get(f"{arch}.attention.head_count_kv", heads))
    if ref.kind != "hf":
        raise IpoError(f"base model {ref.location} is not a local GGUF file or HF folder; pass the base model's file or folder")
    hf = json.loads((ref.path / "config.json").read_text())
    hf_arch = (hf.get("architectures") or [None])[0]
    if hf_arch not in GGUF_ARCH:
        raise IpoError(f"{ref.location}: architecture {hf_arch!r} is not supported for GGUF LoRA export "
                       f"(supported: {', '.join(GGUF_ARCH)})")
    heads = hf["num_attention_heads"]
    return BaseShape(GGUF_ARCH[hf_arch], hf["num_hidden_layers"], heads, hf.get("num_key_value_heads") or heads)


def _adapter_base(adapter_dir: Path, config: dict) -> ModelRef:
    name = config.get("base_model_name_or_path")
    if not name:
        raise IpoError(f"{adapter_dir}/{ADAPTER_CONFIG} names no base_model_name_or_path; pass the base model")
    return weights.resolve(name)


def cache_key(adapter_dir: Path, base: ModelRef | None = None) -> str:
    """A digest of what the conversion reads: the weights, the scaling, the base shape, the format.
    Not the raw config file: PEFT writes target_modules from a set, in an order that varies."""
    config = adapter_config(adapter_dir)
    read = (_FORMAT, base_shape(adapter_dir, config, base), config["lora_alpha"], config.get("use_rslora"))
    digest = hashlib.sha256(repr(read).encode())
    digest.update((adapter_dir / ADAPTER_WEIGHTS).read_bytes())
    return digest.hexdigest()[:16]


def peft_to_gguf_lora(adapter_dir: Path, out: Path, base: ModelRef | None = None) -> Path:
    """Write the PEFT LoRA adapter in `adapter_dir` as a GGUF LoRA file (F32) that llama.cpp loads."""
    adapter_dir, out = Path(adapter_dir), Path(out)
    config = adapter_config(adapter_dir)
    shape = base_shape(adapter_dir, config, base)
    import gguf
    import torch
    from safetensors.torch import load_file

    if config.get("use_dora") or config.get("alpha_pattern"):
        raise IpoError(f"{adapter_dir}: llama.cpp has no equivalent for DoRA or a per-module alpha_pattern; train a plain LoRA")
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == shape.arch)
    names = gguf.get_tensor_name_map(arch, shape.blocks)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unconvertible = set()
    for key, tensor in load_file(adapter_dir / ADAPTER_WEIGHTS).items():
        match = _LORA_KEY.match(key)
        target = match and names.get_name(match.group(1) + ".weight", try_suffixes=(".weight",))
        if not target:  # embedding LoRA, modules_to_save, modules llama.cpp does not name
            module = key.removeprefix("base_model.model.").split(".lora_")[0]
            unconvertible.add(re.sub(r"\.\d+\.", ".N.", module))
            continue
        pairs.setdefault(target, {})[match.group(2)] = tensor.float()
    if unconvertible:
        raise IpoError(f"{adapter_dir}: no GGUF LoRA equivalent for {', '.join(sorted(unconvertible))} "
                       f"(llama.cpp adapters hold LoRA A/B pairs of the {shape.arch} linear weights)")
    if not pairs:
        raise IpoError(f"{adapter_dir}/{ADAPTER_WEIGHTS} holds no LoRA weights")
    for target, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise IpoError(f"{adapter_dir}: {target} has lora_{next(iter(ab))} but not its pair")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), shape.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for target, ab in sorted(pairs.items()):
        a, b = ab["A"], ab["B"]
        if config.get("use_rslora"):  # PEFT scales by alpha / sqrt(r) then; llama.cpp always by alpha / r
            b = b * a.shape[0] ** 0.5
        if shape.arch in _PERMUTES_QK and target.endswith((".attn_q.weight", ".attn_k.weight")):
            b = _permute_rows(b, shape.heads if ".attn_q." in target else shape.kv_heads)
        writer.add_tensor(target + ".lora_a", a.contiguous().numpy())
        writer.add_tensor(target + ".lora_b", b.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)  # atomic: a half-written file is never taken for a finished one
    return out


def _permute_rows(weights, heads: int):
    """convert_hf_to_gguf's LlamaModel.permute: within each head, interleave the two rotary halves."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def merge(adapter_dir: Path, out_dir: Path) -> Path:
    """Fold the adapter into its base model and save the result (model and tokenizer) as a checkpoint."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config = adapter_config(adapter_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise IpoError(f"{out_dir} exists and is not empty; choose another --out")
    ref = _adapter_base(adapter_dir, config)
    # a GGUF base becomes a checkpoint first; a hub id works when a hub is reachable
    base = weights.materialize_gguf(ref.path) if ref.kind == "gguf" else ref.location
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verbosity.quiet_transformers()  # the CLI shows its own status line
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    # a trainer saves the tokenizer it used beside the adapter; else the base's
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    tmp.replace(out_dir)
    return out_dir
