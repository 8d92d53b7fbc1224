"""`ipo bench`: IFEval's checkers offline, GSM8K's final number, storage and resume, the paired
test, the loop's controls and drift figures, and bad input."""

import json
import os
import subprocess
import sys

import pytest

from ipo_tui.errors import IpoError
from ipo_tui.evaluation import bench, gsm8k, ifeval
from ipo_tui.evaluation.stats import mcnemar
from ipo_tui.workspace.store import Store

# one instruction of each checker family: (instruction id, kwargs, a response that follows it, one that does not)
FAMILIES = [
    ("punctuation:no_comma", {}, "No commas at all here.", "One, two, three."),
    ("keywords:existence", {"keywords": ["apple"]}, "I like apple pie.", "I like pears."),
    ("keywords:frequency", {"relation": "at least", "keyword": "cat", "frequency": 2}, "A cat met a cat.", "A cat."),
    ("keywords:forbidden_words", {"forbidden_words": ["dog"]}, "A cat sat.", "A dog sat."),
    ("keywords:letter_frequency", {"let_relation": "at least", "letter": "z", "let_frequency": 3}, "zig zag zoo", "zag"),
    ("language:response_language", {"language": "en"},
     "This sentence is written entirely in plain English, as the instruction asks of it.",
     "Cette phrase est écrite entièrement en français, comme personne ne l'a demandé."),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "Dr. Smith came home. He slept.", "One. Two. Three. Four."),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5}, "one two three four five six", "one two"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", "Only one part."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\n\nP.S. Bye.", "Hello. Bye."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", "Dear [name]."),
    ("detectable_format:json_format", {}, '{"a": 1}', "a is 1"),
    ("detectable_format:title", {}, "<<A Title>>\nText.", "A Title\nText."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one"),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Just one answer."),
    ("startend:end_checker", {"end_phrase": "Any questions?"}, "Here it is. Any questions?", "Any questions? Here it is."),
    ("startend:quotation", {}, '"All quoted."', "Not quoted."),
    ("change_case:english_lowercase", {}, "all of this is lowercase english text.", "Some Of This Is Not."),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2},
     "THIS IS loud.", "This is quiet."),
]

OFFLINE_CHECK = """
import json, socket, sys
def refuse(*args, **kwargs):
    raise OSError("this check runs offline")
socket.socket.connect = refuse
from ipo_tui.evaluation import ifeval
cases = json.loads(sys.argv[1])
out = []
for instruction, kwargs, good, bad in cases:
    item = {"key": "1", "prompt": "p", "instruction_id_list": [instruction], "kwargs": [kwargs]}
    out.append([ifeval.check(item, good)["strict"][0], ifeval.check(item, bad)["strict"][0]])
heavy = [m for m in ("datasets", "sacrebleu", "evaluate", "lm_eval.tasks") if m in sys.modules]
print(json.dumps({"verdicts": out, "heavy": heavy}))
"""


def test_every_checker_family_offline_with_an_empty_nltk_cache(tmp_path):
    """In a fresh process with no network and empty caches: each family passes its good response
    and fails its bad one, punkt comes from the package, and the harness stays unimported."""
    env = {**os.environ, "IPO_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    env.pop("NLTK_DATA", None)
    done = subprocess.run([sys.executable, "-c", OFFLINE_CHECK, json.dumps(FAMILIES)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = [case[0] for case, verdict in zip(FAMILIES, result["verdicts"]) if verdict != [True, False]]
    assert wrong == []
    assert result["heavy"] == []
    assert (tmp_path / "cache" / "nltk_data" / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").is_file()
    families = {case[0].split(":")[0] for case in FAMILIES}
    assert families == {i.split(":")[0] for item in ifeval.items() for i in item["instruction_id_list"]}


def test_shipped_prompts_and_loose_scoring():
    items = ifeval.items()
    assert len(items) == 541 and len({i["key"] for i in items}) == 541
    assert all(len(i["instruction_id_list"]) == len(i["kwargs"]) for i in items)
    item = {"key": "1", "prompt": "p", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}
    # loose drops a first line such as "Sure, here it is:"; strict does not
    assert ifeval.check(item, 'Sure:\n"quoted"') == {"strict": [False], "loose": [True]}
    figures = ifeval.summarize([{"strict": [True, False], "loose": [True, True]}, {"strict": [True], "loose": [True]}])
    assert (figures["prompt_strict"], figures["prompt_loose"], figures["inst_strict"], figures["n"]) == (0.5, 1.0, 2 / 3, 2)


def test_gsm8k_final_number():
    assert len(gsm8k.items()) == 1319 and gsm8k.items()[0]["answer"] == "18"
    assert gsm8k.final_number("so 3 + 4 = 7, and she earns $1,250.") == 1250
    assert gsm8k.final_number("no number") is None
    item = {"key": "x", "prompt": "q", "answer": "18"}
    assert gsm8k.check(item, "16 - 3 - 4 = 9 eggs, 9 * 2 = 18")["correct"]
    assert not gsm8k.check(item, "The answer is 18, or maybe 19")["correct"]


def test_mcnemar_exact():
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(0, 6) == pytest.approx(2 / 64)  # all six disagreements one way
    assert mcnemar(3, 3) == 1.0
    assert mcnemar(1, 9) == pytest.approx(2 * 11 / 1024)


def test_compare_pairs_two_policies_item_by_item(tmp_path):
    store = Store(tmp_path / "ws.sqlite")
    settings = {"backend": "hf", "decoding": "greedy", "max_tokens": 8}
    a, b = store.bench("m", "", settings), store.bench("m", "/adapter", settings)
    assert store.bench("m", "", settings) == a and a != b
    # 10 prompts: A follows 2 of them, B the same 2 and 6 more; B also has an item A lacks
    store.add_bench_items(a, "ifeval", [(str(i), "r", {"strict": [i < 2], "loose": [i < 2]}, 1.0) for i in range(10)])
    store.add_bench_items(b, "ifeval", [(str(i), "r", {"strict": [i < 8], "loose": [i < 8]}, 1.0) for i in range(11)])
    report = bench.compare(store, a, b)
    strict = report["ifeval prompt strict"]
    assert (strict["n"], strict["a"], strict["b"], strict["only_a"], strict["only_b"]) == (10, 0.2, 0.8, 0, 6)
    assert strict["p_value"] == pytest.approx(2 / 64)
    with pytest.raises(IpoError, match="no benchmark 'bench-009'"):
        bench.compare(store, a, "bench-009")
    c = store.bench("other", "", settings)
    with pytest.raises(IpoError, match="share no benchmark items"):
        bench.compare(store, a, c)


def test_a_benchmark_stopped_early_is_marked_incomplete(tmp_path):
    """What a run will answer is said before it starts; a benchmark stopped after its first item is
    listed as 1 of the 541 items asked, not as a result, and `compare` flags it."""
    from test_app_support import FakeEngine
    from typer.testing import CliRunner

    from ipo_tui.cli.app import app

    class Stop(Exception):
        pass

    def stop_after_one(task, done, total):
        if done:
            raise Stop

    assert bench.plan(["ifeval", "gsm8k"], None) == "ifeval 541 items (all), gsm8k 1319 items (all)"
    assert bench.plan(["ifeval"], 50) == "ifeval 50 items"
    store = Store(tmp_path / "ws.sqlite")
    with pytest.raises(Stop):
        bench.run(store, FakeEngine(), ["ifeval"], None, max_tokens=8, progress=stop_after_one)
    tuned = FakeEngine()
    tuned.adapter = "/runs/dpo-001/adapter"
    complete, figures = bench.run(store, tuned, ["ifeval"], 2, max_tokens=8)
    stopped = store.benches()[0]["id"]
    assert bench.shortfall(bench.stored_figures(store, stopped)["ifeval"]) == "1 of 541"
    assert bench.shortfall(figures["ifeval"]) is None and bench.stored_figures(store, complete) == figures
    assert bench.compare(store, stopped, complete)["ifeval prompt strict"]["incomplete"] == {"a": "1 of 541"}
    ws = ["-w", str(tmp_path / "ws.sqlite")]
    listed = CliRunner().invoke(app, ["bench", "list", *ws], env={"COLUMNS": "200"})
    assert "(1 of 541 asked: incomplete)" in listed.output and "(n=2)" in listed.output, listed.output
    compared = CliRunner().invoke(app, ["bench", "compare", stopped, complete, *ws], env={"COLUMNS": "200"})
    assert compared.exit_code == 0 and "ifeval prompt strict (incomplete)" in compared.output
    assert f"{stopped}'s ifeval stopped short: 1 of 541 items asked" in compared.output, compared.output


def test_judge_task_pairs_two_policies_judged_alike(tmp_path):
    """The judge task stores one verdict per pair under the file and the judge's settings (not the
    policy), so a base and its adapter pair up in `compare`; a second run judges nothing again."""
    from test_app_support import FakeEngine, write_eval_file

    from ipo_tui.judge.scoring import configured_judge

    store = Store(tmp_path / "ws.sqlite")
    pairs = bench.PairFile(str(write_eval_file(tmp_path / "pairs.jsonl")))
    base, tuned = FakeEngine(), FakeEngine()
    tuned.adapter = "/runs/dpo-001/adapter"
    ids = []
    for engine in (base, tuned, base):
        bench_id, figures = bench.run(store, engine, ["judge"], judge=configured_judge(engine), pairs=pairs)
        ids.append(bench_id)
        assert figures["judge"]["n"] == 5 and 0 <= figures["judge"]["accuracy"] <= 1
    assert ids[0] == ids[2] != ids[1] and len(store.bench_items(ids[0], "judge")) == 5
    assert bench.compare(store, ids[0], ids[1])["judge"]["n"] == 5


@pytest.mark.slow
def test_bench_stores_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from ipo_tui import backends
    from ipo_tui.backends import weights
    from ipo_tui.cli.app import app

    store = Store(tmp_path / "ws.sqlite")
    engine = backends.load("llamacpp", weights.resolve(None))
    calls = []

    class Stop(Exception):
        pass

    def stop_after_two(task, done, total):
        calls.append((task, done, total))
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        bench.run(store, engine, ["gsm8k"], limit=4, max_tokens=8, progress=stop_after_two)
    bench_id = store.benches()[0]["id"]
    assert len(store.bench_items(bench_id, "gsm8k")) == 2  # what was answered before the stop is kept
    again, figures = bench.run(store, engine, ["gsm8k", "ifeval"], limit=4, max_tokens=8)
    engine.close()
    assert again == bench_id and figures["gsm8k"]["n"] == 4 and figures["ifeval"]["n"] == 4
    assert figures["ifeval"]["at_max_tokens"] is not None and 0 <= figures["ifeval"]["prompt_loose"] <= 1
    keys = set(store.bench_items(bench_id, "gsm8k"))
    assert keys == {i["key"] for i in bench.spread(gsm8k.items(), 4)}
    assert bench.stored_figures(store, bench_id) == figures  # `ipo bench list` summarizes the same way
    listed = CliRunner().invoke(app, ["bench", "list", "-w", str(tmp_path / "ws.sqlite")], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and f"ifeval {figures['ifeval']['mean_tokens']:.0f} tokens" in listed.output


def test_bench_cli_bad_input(tmp_path):
    from typer.testing import CliRunner

    from ipo_tui.cli.app import app

    runner = CliRunner()
    ws = str(tmp_path / "ws.sqlite")
    for args, message in ((["bench", "--tasks", "mmlu"], "choose among ifeval, gsm8k, judge"),
                          (["bench", "--tasks", "judge"], "needs a labelled pair file"),
                          (["bench", "--tasks", "judge", "--pairs", str(tmp_path / "none.jsonl")], "does not exist"),
                          (["bench", "compare", "bench-001", "bench-002"], "no benchmark 'bench-001'")):
        result = runner.invoke(app, [*args, "-w", ws])
        assert isinstance(result.exception, IpoError) and message in str(result.exception), (args, result.output)
    for option, value in (("--max-tokens", "0"), ("--limit", "-3")):  # refused at the option, before any model loads
        result = runner.invoke(app, ["bench", option, value, "-m", "no-such-model", "-w", ws])
        assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output


def test_pairs_by_rules(tmp_path):
    from ipo_tui.loop import controls
    from ipo_tui.loop.stages import Policy

    store = Store(tmp_path / "ws.sqlite")
    store.add_prompt_set("s", "test", [{"text": "q1"}, {"text": "q2"}, {"text": "q3"}])
    p1, p2, p3 = store.prompts("s")
    policy = Policy("m")
    store.add_candidates(p1["id"], "m", "", {}, [(0, 0, "short"), (1, 1, "a much longer answer"), (2, 2, "mid one")])
    store.add_candidates(p2["id"], "m", "", {}, [(0, 0, "same"), (1, 1, "same")])  # one distinct text: no pair
    store.add_candidates(p3["id"], "m", "", {}, [(0, 0, "abc"), (1, 1, "xyz")])  # equal lengths
    longer = controls.pairer_id("longer", policy, 0)
    report = controls.by_rule(store, "longer", longer, policy, [p1, p2, p3], seed=0)
    assert (report.proposed, report.too_few, report.too_close) == (1, 1, 1)
    [pair] = store.pairs(judge=longer)
    assert (pair["chosen"], pair["rejected"]) == ("a much longer answer", "short")
    first = controls.pairer_id("random", policy, 0)
    controls.by_rule(store, "random", first, policy, [p1, p3], seed=0)
    picks = [(r["chosen"], r["rejected"]) for r in store.pairs(judge=first)]
    assert len(picks) == 2 and all(c != r for c, r in picks)
    controls.by_rule(store, "random", first, policy, [p1, p3], seed=0)  # the same seed picks the same again
    assert [(r["chosen"], r["rejected"]) for r in store.pairs(judge=first)] == picks
    for bad in ("best", "judge:", "judge: "):
        with pytest.raises(IpoError, match="--pairs-by"):
            controls.parse(bad)
    assert controls.parse("judge:qwen2.5-coder-1.5b-instruct") == "judge:qwen2.5-coder-1.5b-instruct"


def test_training_drift_warns_when_accuracy_saturates_early():
    from ipo_tui.loop.iterations import training_drift

    def step(s, acc, chosen=-50.0, rejected=-60.0):
        return {"step": s, "max_steps": 20, "rewards/accuracies": acc, "logps/chosen": chosen, "logps/rejected": rejected}

    early = training_drift([step(1, 0.5, -40, -41), step(2, 1.0), step(3, 1.0), step(4, 1.0), step(20, 1.0, -45, -70)])
    assert early["logps_chosen"] == [-40, -45] and early["logps_rejected"] == [-41, -70]  # quarters of one step
    eight = training_drift([step(s, 0.5, -40 - s, -40 - 2 * s) for s in range(1, 9)])
    assert eight["logps_chosen"] == [-41.5, -47.5] and eight["logps_rejected"] == [-43, -55]
    assert "step 4 of 20" in early["warning"]
    late = training_drift([step(s, 0.5) for s in range(1, 15)] + [step(s, 1.0) for s in range(15, 21)])
    assert "warning" not in late
