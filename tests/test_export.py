"""Adapters out of training: a real PEFT LoRA on the embedded model, exported to GGUF and applied by
llama.cpp, and merged into a checkpoint; each compared with transformers running base + adapter."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ipo_tui import backends, config
from ipo_tui.backends import weights
from ipo_tui.backends.base import split_common_prefix
from ipo_tui.cli import export
from ipo_tui.errors import IpoError
from ipo_tui.judge.scoring import NO_VARIANTS, YES_VARIANTS, Judge, variant_ids
from ipo_tui.training.export import cache_key, peft_to_gguf_lora

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ANSWERS = ["42", "12 + 30 = 52"]
# Bounds, measured on this CPU with headroom. Max |Δ log-prob| over the vocabulary against
# transformers fp32 running base + adapter: llama.cpp on the F32 weights 0.007 without the adapter,
# 0.011 with it (0.37 for a weaker adapter whose q/k LoRA B was not permuted like the base
# weights); on the Q4_1 weights 0.60. The adapter itself moves log-probs by up to 2.26. Max
# |Δ p'yes|: 0.0003, 0.0006, 0.047, and the adapter's own effect 0.051.
F32_GAP, F32_PYES = 0.03, 0.005
Q4_GAP, Q4_PYES = 1.2, 0.1
MIN_EFFECT, MIN_PYES_EFFECT = 1.0, 0.02


def load(spec, **options):
    return backends.load("llamacpp", weights.resolve(str(spec)), threads=1, **options)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for torch and llama.cpp: their spinning worker threads crawl (3-10x slower
    here) when the machine's 2 cores are shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def embedded():
    ref = weights.resolve(None)
    return ref, weights.materialize_gguf(ref.path), weights.dequantized_gguf(ref.path)


@pytest.fixture(scope="module")
def f32_base(embedded):
    backend = load(embedded[2])
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def lora(embedded, f32_base, tmp_path_factory):
    """A PEFT adapter with random B (PEFT starts B at zero, a no-op), judge prompts rendered to
    token ids, and transformers' last-position logits with and without the adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded[1], dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(folder)

    judge = Judge(f32_base)
    seqs = [judge.render(judge.template_for("math"), "What is 12 + 30?", answer)[0] for answer in ANSWERS]

    def logits(m):
        with torch.no_grad():
            return np.stack([m(torch.tensor([s])).logits[0, -1].numpy() for s in seqs])

    with_adapter = logits(model)
    with model.disable_adapter():
        without = logits(model)
    return folder, seqs, with_adapter, without


def log_softmax(logits):
    return torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy()


def engine_logprobs(backend, seqs):
    """Full-vocabulary log-probabilities of the next token, through the backend's scoring path."""
    prefix, suffixes = split_common_prefix(seqs)
    return backend.last_logprobs(prefix, suffixes, list(range(backend.llm.n_vocab()))).astype(np.float64)


def p_yes(lp, backend):
    yes, no = variant_ids(backend, YES_VARIANTS), variant_ids(backend, NO_VARIANTS)
    margin = np.logaddexp.reduce(lp[:, yes], axis=1) - np.logaddexp.reduce(lp[:, no], axis=1)
    return 1 / (1 + np.exp(-margin))


def test_gguf_lora_matches_peft(embedded, f32_base, lora, tmp_path, capsys):
    ref = embedded[0]
    folder, seqs, with_adapter, without = lora
    hf_lora, hf_base = log_softmax(with_adapter), log_softmax(without)

    exported = tmp_path / "adapter.gguf"
    result = CliRunner().invoke(export.app, ["gguf-lora", str(folder), "--out", str(exported)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and exported.is_file()
    meta = weights.gguf_metadata(exported)
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"]) == ("adapter", "lora", 16.0)

    # the PEFT folder, converted into the cache once and applied to both instances: the Q4 file
    # generates, its F32 copy scores
    scored = load(ref.path, adapter=str(folder))
    assert scored.adapter == str(folder.resolve())
    assert (config.cache_dir() / "gguf-lora" / f"{cache_key(folder, ref)}.gguf").is_file()
    native = load(ref.path, adapter=str(exported), score_precision="native")
    try:
        base_lp, f32_lp, q4_lp = (engine_logprobs(b, seqs) for b in (f32_base, scored, native))
    finally:
        scored.close()
        native.close()

    gaps = {
        "effect": np.abs(hf_lora - hf_base).max(),
        "f32_base": np.abs(base_lp - hf_base).max(),
        "f32_lora": np.abs(f32_lp - hf_lora).max(),
        "q4_lora": np.abs(q4_lp - hf_lora).max(),
    }
    pyes = {
        "effect": np.abs(p_yes(hf_lora, f32_base) - p_yes(hf_base, f32_base)).max(),
        "f32_base": np.abs(p_yes(base_lp, f32_base) - p_yes(hf_base, f32_base)).max(),
        "f32_lora": np.abs(p_yes(f32_lp, f32_base) - p_yes(hf_lora, f32_base)).max(),
        "q4_lora": np.abs(p_yes(q4_lp, f32_base) - p_yes(hf_lora, f32_base)).max(),
    }
    with capsys.disabled():
        print("\nmax |Δ log-prob|:", {k: round(float(v), 4) for k, v in gaps.items()},
              "\nmax |Δ p'yes|:", {k: round(float(v), 4) for k, v in pyes.items()})
    assert max(gaps["f32_base"], gaps["f32_lora"]) < F32_GAP and max(pyes["f32_base"], pyes["f32_lora"]) < F32_PYES
    assert gaps["q4_lora"] < Q4_GAP and pyes["q4_lora"] < Q4_PYES
    # the adapter's effect dwarfs the F32 gap, so a missing or mangled adapter cannot pass
    assert gaps["effect"] > MIN_EFFECT and pyes["effect"] > MIN_PYES_EFFECT


def test_merge_matches_peft(lora, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, seqs, with_adapter, _ = lora
    out = tmp_path / "merged"
    result = CliRunner().invoke(export.app, ["merge", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (out / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = np.stack([merged(torch.tensor([s])).logits[0, -1].numpy() for s in seqs])
    assert np.abs(logits - with_adapter).max() < 1e-4  # measured 4.2e-5 (fp32 rounding of the merge)


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(IpoError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_adapters(embedded, lora, tmp_path):
    import gguf
    from safetensors.torch import load_file, save_file

    ref = embedded[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "adapter_config.json" in one_line_error(peft_to_gguf_lora, empty, tmp_path / "x.gguf")
    result = CliRunner().invoke(export.app, ["gguf-lora", str(empty), "--out", str(tmp_path / "x.gguf")])
    assert result.exit_code != 0 and isinstance(result.exception, IpoError)
    assert "not found" in one_line_error(peft_to_gguf_lora, tmp_path / "missing", tmp_path / "x.gguf")
    assert "not found" in one_line_error(load, ref.path, adapter=str(tmp_path / "missing"))
    assert "not a GGUF LoRA" in one_line_error(load, ref.path, adapter=str(ref.path))

    ia3 = tmp_path / "ia3"
    shutil.copytree(lora[0], ia3)
    cfg = json.loads((ia3 / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    assert "not a LoRA adapter" in one_line_error(peft_to_gguf_lora, ia3, tmp_path / "x.gguf")

    # an embedding LoRA has no place in a llama.cpp adapter of linear weights: name the module
    embedding = tmp_path / "embedding"
    shutil.copytree(lora[0], embedding)
    tensors = load_file(embedding / "adapter_model.safetensors")
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(8, 49152)
    tensors["base_model.model.model.embed_tokens.lora_embedding_B"] = torch.zeros(576, 8)
    save_file(tensors, embedding / "adapter_model.safetensors")
    assert "model.embed_tokens" in one_line_error(peft_to_gguf_lora, embedding, tmp_path / "x.gguf")

    # a GGUF LoRA whose shapes do not fit the model: llama.cpp's reason, in one line
    misfit = tmp_path / "misfit.gguf"
    writer = gguf.GGUFWriter(str(misfit), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 16.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((8, 100), np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((576, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "incorrect shape" in one_line_error(load, ref.path, adapter=str(misfit))
