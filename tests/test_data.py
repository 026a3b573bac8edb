import gzip
import json
import os
import subprocess
import sys

import pytest

from alignscope.data import DataConfig, load_pairs, load_subset, paper_prompt, split_pair
from alignscope.io import InputError
from conftest import dialogue, write_hh


def pair(prompt_turns, chosen, rejected):
    base = dialogue(*prompt_turns)
    return {"chosen": base + f"\n\nAssistant: {chosen}", "rejected": base + f"\n\nAssistant: {rejected}"}


def test_split_pair_prompt_ends_at_last_shared_assistant_turn():
    row = pair(["Hi", "Hello!", "How do I bake bread?"], "Use flour.", "No.")
    prompt, chosen, rejected = split_pair(row["chosen"], row["rejected"], "x")
    assert prompt == "Human: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert (chosen, rejected) == (" Use flour.", " No.")
    assert prompt + chosen == row["chosen"].lstrip()


def test_split_pair_keeps_invented_turns_inside_the_reply():
    # As in harmless-base test line 1255: the chosen reply invents a further Human turn.
    chosen = dialogue("Q?") + "\n\nAssistant: Yes.  Human: more?\n\nAssistant: sure"
    rejected = dialogue("Q?") + "\n\nAssistant: No."
    prompt, c, r = split_pair(chosen, rejected, "x")
    assert prompt == "Human: Q?\n\nAssistant:"
    assert c == " Yes.  Human: more?\n\nAssistant: sure" and r == " No."


@pytest.mark.parametrize("row, message", [
    ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: x"}, "no Assistant turn"),
    ({"chosen": "\n\nAssistant: hi", "rejected": "\n\nAssistant: ho"}, "no Human turn"),
    ({"chosen": dialogue("a", "b"), "rejected": dialogue("c", "d")}, "do not share a prompt"),
    ({"chosen": 3, "rejected": dialogue("c", "d")}, "'chosen' must be a string"),
])
def test_split_pair_errors_say_what_is_wrong(row, message):
    with pytest.raises(InputError, match=message):
        split_pair(row["chosen"], row["rejected"], "file.jsonl, line 7")


def test_bad_lines_are_reported_by_file_and_line(tmp_path):
    good = pair(["q"], "a", "b")
    path = write_hh(tmp_path, "harmless-base", "test", [good, "{not json", {"chosen": good["chosen"]}], gz=False)
    with pytest.raises(InputError) as e:
        load_subset(str(tmp_path), "harmless-base", "test")
    assert f"{path}, line 2" in str(e.value) and "not valid JSON" in str(e.value)

    pairs, info = load_subset(str(tmp_path), "harmless-base", "test", strict=False)
    assert [p.line for p in pairs] == [1]
    assert [(s["line"], s["reason"]) for s in info["skipped"]] == [
        (2, "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (3, "missing field 'rejected'"),
    ]


def test_truncated_gzip_is_reported(tmp_path):
    rows = [pair([f"question {i}"], "a" * 200, "b") for i in range(200)]
    path = write_hh(tmp_path, "helpful-base", "test", rows)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"helpful-base/test.jsonl.gz, line \d+: gzip stream is truncated"):
        load_subset(str(tmp_path), "helpful-base", "test")
    pairs, info = load_subset(str(tmp_path), "helpful-base", "test", strict=False)
    assert 0 < len(pairs) < 200 and "truncated" in info["skipped"][-1]["reason"]


def test_missing_file_and_unknown_subset(tmp_path):
    with pytest.raises(InputError, match="no harmless-base/train.jsonl"):
        load_subset(str(tmp_path), "harmless-base", "train")
    with pytest.raises(InputError, match="unknown HH-RLHF subset 'harmful-base'"):
        load_subset(str(tmp_path), "harmful-base", "train")


def test_filters_are_counted(tmp_path):
    rows = [pair(["q1"], "same", "same"), pair(["q2"], "", "b"), pair(["q3"], "a", "b"), pair(["q3"], "c", "d"),
            pair(["q4"], "a", "b")]
    write_hh(tmp_path, "harmless-base", "train", rows)
    cfg = DataConfig(source=str(tmp_path), subsets=["harmless-base"], drop_identical=True, drop_empty=True,
                     drop_duplicate_prompts=True)
    loaded = load_pairs(cfg)
    assert [p.line for p in loaded.pairs] == [3, 5]
    assert loaded.summary["filtered"] == [{"subset": "harmless-base", "identical": 1, "empty_reply": 1,
                                           "duplicate_prompt": 1}]
    assert len(load_pairs(DataConfig(source=str(tmp_path), subsets=["harmless-base"])).pairs) == 5
    assert [p.line for p in load_pairs(DataConfig(source=str(tmp_path), subsets=["harmless-base"], limit=2)).pairs] == [1, 2]


def test_plain_and_gzipped_files_give_the_same_pairs(tmp_path):
    rows = [pair([f"q{i}", "a", "b?"], f"yes {i}", f"no {i}") for i in range(5)]
    write_hh(tmp_path / "plain", "helpful-base", "test", rows, gz=False)
    write_hh(tmp_path / "gz", "helpful-base", "test", rows, gz=True)
    a, _ = load_subset(str(tmp_path / "plain"), "helpful-base", "test")
    b, _ = load_subset(str(tmp_path / "gz"), "helpful-base", "test")
    assert a == b and len(a) == 5
    assert [t.role for t in a[0].turns] == ["Human", "Assistant", "Human"]


def test_hub_path_reads_the_official_file_in_the_same_order(hh_data, tmp_path):
    """The hub code path for real: huggingface_hub resolves the file from a cache laid out
    as a download would leave it (no network here), and we parse it like a local copy."""
    snapshot = tmp_path / "hub" / "datasets--Anthropic--hh-rlhf" / "snapshots" / ("0" * 40)
    (snapshot / "harmless-base").mkdir(parents=True)
    (snapshot / "harmless-base" / "test.jsonl.gz").write_bytes((hh_data / "harmless-base" / "test.jsonl.gz").read_bytes())
    refs = tmp_path / "hub" / "datasets--Anthropic--hh-rlhf" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    code = ("from alignscope.data import load_subset; import json; "
            "p, info = load_subset('hub', 'harmless-base', 'test'); "
            "print(json.dumps([[x.id, x.prompt, x.chosen] for x in p]))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    hub_rows = json.loads(out.stdout)
    local, _ = load_subset(str(hh_data), "harmless-base", "test")
    assert hub_rows == [[x.id, x.prompt, x.chosen] for x in local]


def test_hub_failure_says_how_to_work_offline(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    code = "from alignscope.data import load_subset; load_subset('hub', 'helpful-base', 'train')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "--data DIR" in out.stderr


def test_real_test_splits_parse_completely(hh_data):
    loaded = load_pairs(DataConfig(source=str(hh_data), split="test"))
    assert [f["rows"] for f in loaded.summary["files"]] == [2312, 2354]
    assert loaded.summary["skipped_rows"] == 0
    assert all(p.prompt.endswith("\n\nAssistant:") and p.prompt.startswith("Human:") for p in loaded.pairs)
    raw = [json.loads(l) for l in gzip.open(hh_data / "harmless-base" / "test.jsonl.gz", "rt")]
    assert all(p.prompt + p.chosen == r["chosen"].lstrip() and p.prompt + p.rejected == r["rejected"].lstrip()
               for p, r in zip(loaded.pairs, raw))
    identical = load_pairs(DataConfig(source=str(hh_data), split="test", drop_identical=True))
    assert identical.summary["filtered"][1]["identical"] == 2  # helpful-base test has two


def test_paper_prompt_matches_the_study_rule():
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d\n\ne"
    # the study dropped only the last blank-line-separated part, and only if it starts with
    # "Assistant:": a final reply of two paragraphs stays in the prompt whole
    assert paper_prompt(text) == text.strip()
    assert paper_prompt(text[: -len("\n\ne")]) == "Human: a\n\nAssistant: b\n\nHuman: c"
    assert paper_prompt(dialogue("x", "y")) == "Human: x"


def test_the_evaluation_sets_dialogues_are_left_out_of_training_data(hh_data, tmp_path):
    """The offline studies train on the test split the evaluation set comes from: no branch of
    an evaluation dialogue (same opening Human turn) may reach training."""
    from alignscope.data import DataConfig, first_human_turn, load_pairs
    from alignscope.evalset import EvalsetConfig, build_evalset, write_evalset

    for fmt in ("hh", "paper"):
        evalset = build_evalset(EvalsetConfig(data=str(hh_data), format=fmt))
        path = write_evalset(evalset, tmp_path / f"evalset-{fmt}.json")
        openings = {first_human_turn(x["prompt"]) for c in ("harmful", "helpful") for x in evalset[c]}
        cfg = DataConfig(source=str(hh_data), subsets=["harmless-base", "helpful-base"], split="test")
        everything = load_pairs(cfg)
        kept = load_pairs(DataConfig(**{**cfg.__dict__, "exclude_prompts_of": str(path)}))
        assert not {first_human_turn(p.prompt) for p in kept.pairs} & openings
        dropped = len(everything.pairs) - len(kept.pairs)
        assert dropped == kept.summary["excluded_for_evaluation"] >= 100  # each prompt's own row, and its branches


def test_a_folder_of_answers_is_left_out_of_training_beside_an_evaluation_set(hh_data, reference, tmp_path):
    """A reward model trained in a study whose card rates the reference study's answers must not have
    seen those dialogues either, whatever seed picked the study's own prompts."""
    from alignscope.data import DataConfig, data_fingerprint, first_human_turn, load_pairs
    from alignscope.evalset import EvalsetConfig, build_evalset, write_evalset

    evalset = write_evalset(build_evalset(EvalsetConfig(data=str(hh_data), seed=7)), tmp_path / "evalset.json")
    cfg = DataConfig(source=str(hh_data), subsets=["harmless-base", "helpful-base"], split="test",
                     exclude_prompts_of=[str(evalset), str(reference / "responses")])
    kept = {first_human_turn(p.prompt) for p in load_pairs(cfg).pairs}
    for source in (evalset, reference / "responses"):
        prompts = [x["prompt"] for c in ("harmful", "helpful") for x in json.loads(evalset.read_text())[c]] \
            if source == evalset else [x["prompt"] for f in source.glob("*.json") for x in json.loads(f.read_text())]
        assert not kept & {first_human_turn(p) for p in prompts}
    only_evalset = DataConfig(**{**cfg.__dict__, "exclude_prompts_of": str(evalset)})
    assert data_fingerprint(cfg) != data_fingerprint(only_evalset)
