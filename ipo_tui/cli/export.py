"""`ipo export`: trained adapters out to llama.cpp (GGUF LoRA) or to a merged checkpoint.

Mounted by cli/app.py; the conversion code (torch, peft, gguf) is imported inside the commands.
Errors are IpoError, which cli.main turns into one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ipo_tui.cli.common import out, status

app = typer.Typer(help="Export trained adapters.", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

AdapterArg = Annotated[Path, typer.Argument(help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors).")]


@app.command("gguf-lora")
def gguf_lora(
    adapter_dir: AdapterArg,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The GGUF LoRA file to write.")],
    base: Annotated[str | None, typer.Option(
        "--base", "-m", help="Base model (GGUF file, HF folder or registered name); default: the adapter's base_model_name_or_path.",
    )] = None,
) -> None:
    """Convert a PEFT LoRA adapter to a GGUF LoRA file that llama.cpp applies on top of the base GGUF."""
    from ipo_tui.backends import weights
    from ipo_tui.training.export import peft_to_gguf_lora

    with status(f"converting {adapter_dir}"):
        written = peft_to_gguf_lora(adapter_dir, out_file, weights.resolve(base) if base else None)
    out.print(f"wrote {written} ({_size(written.stat().st_size)})")


@app.command()
def merge(
    adapter_dir: AdapterArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The folder to write the merged checkpoint into (new or empty).")],
) -> None:
    """Fold a LoRA adapter into its base model and save a full checkpoint (model and tokenizer)."""
    from ipo_tui.training.export import merge as merge_adapter

    with status(f"merging {adapter_dir} into its base model"):
        written = merge_adapter(adapter_dir, out_dir)
    total = sum(f.stat().st_size for f in written.iterdir() if f.is_file())
    out.print(f"wrote {written} ({_size(total)})")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"
