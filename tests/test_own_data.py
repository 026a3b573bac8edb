"""Bringing one's own data: TRL's standard formats from files and the hub, row checks, exclusion
across formats, and chat models trained and prompted in their own template (tiny models, seconds)."""

import json
import os
import subprocess
import sys

import pytest

from alignscope.data import DataConfig, load_pairs
from alignscope.io import InputError
from conftest import ROOT

USER = lambda text: {"role": "user", "content": text}  # noqa: E731
ASSISTANT = lambda text: {"role": "assistant", "content": text}  # noqa: E731


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def pairs_of(path, **kw):
    return load_pairs(DataConfig(source=str(path), **kw)).pairs


def test_each_standard_format_gives_its_prompt_and_replies(tmp_path):
    explicit = pairs_of(write_jsonl(tmp_path / "a.jsonl", [
        {"prompt": "What colour is the sky?", "chosen": " Blue.", "rejected": " Green."}]))
    assert [(p.id, p.prompt, p.chosen, p.rejected) for p in explicit] == [
        ("a.jsonl:1", "What colour is the sky?", " Blue.", " Green.")]

    implicit_chat = pairs_of(write_jsonl(tmp_path / "b.jsonl", [
        {"chosen": [USER("Hi"), ASSISTANT("Hello!"), USER("Sky?"), ASSISTANT("Blue.")],
         "rejected": [USER("Hi"), ASSISTANT("Hello!"), USER("Sky?"), ASSISTANT("Green.")]}]))[0]
    assert implicit_chat.prompt == [USER("Hi"), ASSISTANT("Hello!"), USER("Sky?")]
    assert (implicit_chat.chosen, implicit_chat.rejected) == ([ASSISTANT("Blue.")], [ASSISTANT("Green.")])

    implicit_hh = pairs_of(write_jsonl(tmp_path / "c.jsonl", [
        {"chosen": "\n\nHuman: Sky?\n\nAssistant: A blue one.",
         "rejected": "\n\nHuman: Sky?\n\nAssistant: A green one."}]))[0]
    assert (implicit_hh.prompt, implicit_hh.chosen) == ("Human: Sky?\n\nAssistant:", " A blue one.")

    completion = pairs_of(write_jsonl(tmp_path / "d.jsonl", [{"prompt": [USER("Sky?")],
                                                              "completion": [ASSISTANT("Blue.")]}]))[0]
    assert (completion.prompt, completion.chosen, completion.rejected) == ([USER("Sky?")], [ASSISTANT("Blue.")], None)

    messages = pairs_of(write_jsonl(tmp_path / "e.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, USER("Sky?"), ASSISTANT("Blue.")]}]))[0]
    assert messages.prompt == [{"role": "system", "content": "Be brief."}, USER("Sky?")]
    assert messages.chosen == [ASSISTANT("Blue.")]

    mapped = pairs_of(write_jsonl(tmp_path / "f.jsonl", [{"question": "Sky?", "better": " Blue.", "worse": " Green.",
                                                          "prompt": "an unrelated column"}]),
                      columns={"prompt": "question", "chosen": "better", "rejected": "worse"})[0]
    assert (mapped.prompt, mapped.chosen, mapped.rejected) == ("Sky?", " Blue.", " Green.")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q", "chosen": " A"}, r"b.jsonl, line 2: missing field 'rejected'"),
    ({"prompt": "Q", "chosen": 3, "rejected": " B"},
     r"line 2: field 'chosen' must be a string or a list of messages, got int"),
    ({"prompt": [USER("Q")], "chosen": [ASSISTANT("A"), USER("more?")], "rejected": [ASSISTANT("B")]},
     r"line 2: the chosen conversation does not end with the assistant"),
    ({"prompt": [USER("Q")], "chosen": " A", "rejected": " B"}, r"line 2: fields must be all strings or all lists"),
    ({"prompt": [{"role": "narrator", "content": "Q"}], "chosen": [ASSISTANT("A")], "rejected": [ASSISTANT("B")]},
     r"line 2: prompt\[0\] must be a message"),
    ("{not json", r"line 2: not valid JSON"),
])
def test_a_bad_row_fails_with_file_and_line_and_is_listed_when_not_strict(tmp_path, row, message):
    good = {"prompt": "Q", "chosen": " A", "rejected": " B"}
    if isinstance(row.get("prompt") if isinstance(row, dict) else None, list):
        good = {"prompt": [USER("Q")], "chosen": [ASSISTANT("A")], "rejected": [ASSISTANT("B")]}
    path = write_jsonl(tmp_path / "b.jsonl", [good, row, good])
    with pytest.raises(InputError, match=message):
        pairs_of(path)
    loaded = load_pairs(DataConfig(source=str(path), strict=False))
    assert [p.id for p in loaded.pairs] == ["b.jsonl:1", "b.jsonl:3"]
    assert [s["line"] for s in loaded.summary["files"][0]["skipped"]] == [2]


def test_a_messages_conversation_must_end_with_the_assistant(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [USER("Q"), ASSISTANT("A")]}, {"messages": [USER("Q")]}])
    with pytest.raises(InputError, match=r"m.jsonl, line 2: the messages conversation does not end with the assistant"):
        pairs_of(path)


def test_unknown_columns_and_formats_say_what_was_expected(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "Q", "answer": "A"}])
    with pytest.raises(InputError, match=r"none of TRL's standard formats.*data.columns"):
        pairs_of(path)
    with pytest.raises(InputError, match=r"data.columns names columns it lacks \(prompt: query\)"):
        pairs_of(path, columns={"prompt": "query", "completion": "answer"})
    assert pairs_of(path, columns={"prompt": "question", "completion": "answer"})[0].chosen == "A"


def test_identical_and_empty_replies_are_counted_by_the_filters(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": [USER("Q1")], "chosen": [ASSISTANT("Same")], "rejected": [ASSISTANT("Same")]},
        {"prompt": [USER("Q2")], "chosen": [ASSISTANT("  ")], "rejected": [ASSISTANT("B")]},
        {"prompt": [USER("Q3")], "chosen": [ASSISTANT("A")], "rejected": [ASSISTANT("B")]}])
    loaded = load_pairs(DataConfig(source=str(path), drop_identical=True, drop_empty=True))
    assert [p.id for p in loaded.pairs] == ["f.jsonl:3"]
    assert loaded.summary["filtered"][0] | {"subset": None} == {"subset": None, "identical": 1, "empty_reply": 1,
                                                                "duplicate_prompt": 0}


def test_evaluation_prompts_are_left_out_whatever_the_format(tmp_path):
    evalset = tmp_path / "evalset.json"
    evalset.write_text(json.dumps({"harmful": [{"id": "h1", "prompt": "Human: How do I pick a lock?\n\nAssistant:"}],
                                   "helpful": [{"id": "h2", "prompt": "Human: Name a shop.\n\nAssistant:"}]}))
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": [USER("How do I pick a lock?"), ASSISTANT("Why?"), USER("Please.")], "chosen": [ASSISTANT("No.")],
         "rejected": [ASSISTANT("Sure.")]},
        {"prompt": [USER("Name a cat.")], "chosen": [ASSISTANT("Tom.")], "rejected": [ASSISTANT("No.")]}])
    plain = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Name a shop.", "completion": " Bits & Bobs."},
                                               {"prompt": "Name a dog.", "completion": " Rex."}])
    loaded = load_pairs(DataConfig(source=str(path), exclude_prompts_of=str(evalset)))
    assert [p.id for p in loaded.pairs] == ["p.jsonl:2"] and loaded.summary["excluded_for_evaluation"] == 1
    assert [p.id for p in pairs_of(plain, exclude_prompts_of=str(evalset))] == ["s.jsonl:2"]


def test_parquet_json_and_csv_files_read_through_datasets_report_rows_by_index(tmp_path):
    from datasets import Dataset

    rows = [{"prompt": [USER("Q1")], "chosen": [ASSISTANT("A1")], "rejected": [ASSISTANT("B1")]},
            {"prompt": [USER("Q2")], "chosen": [ASSISTANT("A2")], "rejected": [ASSISTANT("B2")]}]
    Dataset.from_list(rows).to_parquet(tmp_path / "pairs.parquet")
    parquet = load_pairs(DataConfig(source=str(tmp_path / "pairs.parquet")))
    assert [(p.id, p.prompt, p.chosen) for p in parquet.pairs] == [("pairs.parquet#0", [USER("Q1")], [ASSISTANT("A1")]),
                                                                  ("pairs.parquet#1", [USER("Q2")], [ASSISTANT("A2")])]
    assert parquet.summary["files"][0]["format"] == "preference" and len(parquet.summary["files"][0]["sha256"]) == 64
    (tmp_path / "pairs.json").write_text(json.dumps([{"prompt": "Q", "chosen": " A", "rejected": " B"}]))
    assert pairs_of(tmp_path / "pairs.json")[0].rejected == " B"
    (tmp_path / "pairs.csv").write_text("question,answer\nQ1,A1\n,A2\n")
    with pytest.raises(InputError, match=r"pairs.csv, row 1: missing field 'prompt'"):
        pairs_of(tmp_path / "pairs.csv", columns={"prompt": "question", "completion": "answer"})


HUB_COMMIT = "c" * 40
READ_HUB = """
import json, sys
from alignscope.data import DataConfig, load_pairs, data_fingerprint
from alignscope.io import InputError
cfg = DataConfig(source="hub:someone/pairs", split=sys.argv[1], columns={"prompt": "question"})
try:
    loaded = load_pairs(cfg)
except InputError as e:
    print(json.dumps({"error": str(e)}))
else:
    print(json.dumps({"ids": [p.id for p in loaded.pairs], "prompts": [p.prompt for p in loaded.pairs],
                      "file": loaded.summary["files"][0], "fingerprint": data_fingerprint(cfg)["source"]}))
"""


def test_a_hub_dataset_loads_through_datasets_from_the_local_hub_cache_at_its_commit(tmp_path):
    """The hub path offline: a dataset repo laid out as the hub cache holds it, read by name."""
    repo = tmp_path / "hf" / "hub" / "datasets--someone--pairs"
    data = repo / "snapshots" / HUB_COMMIT / "data"
    data.mkdir(parents=True)
    write_jsonl(data / "train-00000.jsonl", [{"question": "Q1", "chosen": " A1", "rejected": " B1"},
                                             {"question": "Q2", "chosen": " A2", "rejected": " B2"}])
    write_jsonl(data / "test-00000.jsonl", [{"question": "T1", "chosen": " A", "rejected": " B"},
                                            {"question": "T2", "rejected": " B"}])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    def read(split):
        done = subprocess.run([sys.executable, "-c", READ_HUB, split], env=env, capture_output=True, text=True,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    train = read("train")
    assert train["ids"] == ["someone/pairs/train#0", "someone/pairs/train#1"] and train["prompts"] == ["Q1", "Q2"]
    assert train["file"]["revision"] == HUB_COMMIT and train["fingerprint"] == f"hub:someone/pairs@{HUB_COMMIT}"
    assert "hub dataset someone/pairs/test, row 1: missing field 'chosen'" in read("test")["error"]
    assert "could not be read" in read("validation")["error"]


# --------------------------------------------------------------------------- training and chat models

TOPICS = ["bake bread", "fix a bike", "learn chess", "plant tomatoes", "write a poem", "save money"]
GOOD, BAD = "Sure, here is how.", "Go away."


def rows_in(fmt: str, n: int = 6) -> list[dict]:
    """n rows of one clear preference, in one standard format."""
    out = []
    for i in range(n):
        q = f"How do I {TOPICS[i % len(TOPICS)]}? ({i})"
        out.append({
            "text": {"prompt": q, "chosen": " " + GOOD, "rejected": " " + BAD},
            "implicit chat": {"chosen": [USER(q), ASSISTANT(GOOD)], "rejected": [USER(q), ASSISTANT(BAD)]},
            "chat": {"prompt": [USER(q)], "chosen": [ASSISTANT(GOOD)], "rejected": [ASSISTANT(BAD)]},
            "completion": {"prompt": q, "completion": " " + GOOD},
            "messages": {"messages": [USER(q), ASSISTANT(GOOD)]},
        }[fmt])
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny import tiny_chat_opt, tiny_opt

    root = tmp_path_factory.mktemp("own-data")
    return {"root": root, "plain": tiny_opt(root / "plain"), "chat": tiny_chat_opt(root / "chat")}


def recipe(model, out, source, method, lora=False, **training):
    from alignscope.train import LoraSettings, TrainConfig, TrainingSettings

    settings = dict(max_steps=2, learning_rate=1e-2, per_device_batch_size=2, gradient_accumulation_steps=1,
                    precision="fp32", logging_steps=1, save_steps=100, num_threads=1) | training
    return TrainConfig(method=method, model=str(model), output_dir=str(out), data=DataConfig(source=str(source)),
                       lora=LoraSettings() if lora else None, training=TrainingSettings(**settings))


def trained_replies(cfg, n=2):
    """What TRL puts a loss on in the first rows: the decoded completion tokens."""
    from alignscope.train import build_trainer, dpo_dataset, setup, sft_dataset

    s = setup(cfg)
    dataset = (sft_dataset if cfg.method == "sft" else dpo_dataset)(s.loaded.pairs[:n])
    trainer = build_trainer(cfg, s.model, s.tokenizer, dataset, s.ref_model, checkpoints=cfg.output_dir)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    mask = batch["labels"] != -100 if "labels" in batch else batch["completion_mask"] == 1
    return [s.tokenizer.decode(ids[m]) for ids, m in zip(batch["input_ids"], mask)]


@pytest.mark.parametrize("fmt, method, model, suffix", [
    ("text", "dpo", "plain", ".jsonl"), ("text", "sft", "plain", ".jsonl"),
    ("completion", "sft", "plain", ".jsonl"), ("implicit chat", "dpo", "chat", ".jsonl"),
    ("chat", "dpo", "chat", ".jsonl"), ("messages", "sft", "chat", ".jsonl"), ("chat", "dpo", "chat", ".parquet")])
def test_sft_and_dpo_train_from_a_file_in_each_standard_format(models, tmp_path, fmt, method, model, suffix):
    from datasets import Dataset

    from alignscope.train import train

    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        Dataset.from_list(rows_in(fmt)).to_parquet(path)
    else:
        write_jsonl(path, rows_in(fmt))
    cfg = recipe(models[model], tmp_path / "run", path, method, lora=method == "dpo")
    end = "</s>" if model == "plain" else "<|im_end|>\n"  # text gets EOS appended; a template closes the turn
    replies = trained_replies(cfg)
    if method == "dpo":  # chosen rows first, then rejected ones
        assert [r.removeprefix(" ") for r in replies[:2]] == [GOOD + end] * 2
    else:
        assert [r.removeprefix(" ") for r in replies] == [GOOD + end] * 2
    result = train(cfg)
    manifest = json.loads((tmp_path / "run" / "data_manifest.json").read_text())
    expected = ([f"data.jsonl:{i}" for i in range(1, 7)] if suffix == ".jsonl" else
                [f"data.parquet#{i}" for i in range(6)])
    assert sorted(manifest["rows"]) == expected
    assert manifest["files"][0]["sha256"] and len(result.log_history) >= 2
    assert ("chat_template_sha256" in manifest) == (model == "chat")


def test_sft_data_is_refused_for_dpo_and_chat_data_for_a_model_without_a_template(models, tmp_path):
    from alignscope.train import setup

    completion = write_jsonl(tmp_path / "c.jsonl", rows_in("completion"))
    with pytest.raises(InputError, match=r"DPO needs chosen and rejected replies; .*c.jsonl is in prompt-completion"):
        setup(recipe(models["plain"], tmp_path / "x", completion, "dpo", lora=True))
    chat = write_jsonl(tmp_path / "m.jsonl", rows_in("messages"))
    with pytest.raises(InputError, match=rf"{models['plain']} has no chat template"):
        setup(recipe(models["plain"], tmp_path / "x", chat, "sft"))


def test_a_chat_model_trained_on_a_parquet_conversation_answers_in_its_template_and_stops_at_its_end_of_turn(
        models, tmp_path):
    """SFT on messages from a Parquet file written by `datasets`, then answers to HH prompts rendered
    by the template: each ends at <|im_end|> (not the tokenizer's EOS) with exactly the trained reply."""
    from datasets import Dataset

    from alignscope.generate import GenerateConfig, generate_cached
    from alignscope.io import sha256_text
    from alignscope.train import train
    from tiny import CHATML

    Dataset.from_list(rows_in("messages", 24)).to_parquet(tmp_path / "chat.parquet")
    result = train(recipe(models["chat"], tmp_path / "run", tmp_path / "chat.parquet", "sft", max_steps=-1, epochs=8,
                          learning_rate=3e-2, per_device_batch_size=4))
    manifest = json.loads((tmp_path / "run" / "data_manifest.json").read_text())
    assert manifest["chat_template_sha256"] == sha256_text(CHATML) and manifest["rows"][0].startswith("chat.parquet#")

    prompts = ["\n\nHuman: How do I bake bread? (0)\n\nAssistant:", "\n\nHuman: How do I fix a bike? (1)\n\nAssistant:"]
    answers, info = generate_cached(str(result.model_dir), prompts, GenerateConfig(max_new_tokens=12), chat=True)
    assert [(a.response, a.stop, a.prompt) for a in answers] == [(GOOD, "eos", p) for p in prompts]
    assert info["settings"]["prompt_format"] == "chat" and info["settings"]["end_of_turn"] == ["<|im_end|>"]
    assert info["settings"]["chat_template_sha256"] == sha256_text(CHATML)
    plain, _ = generate_cached(str(result.model_dir), prompts, GenerateConfig(max_new_tokens=12))
    assert all(a.response != GOOD for a in plain)  # the same model, prompted outside its template


def test_a_reward_model_is_refused_conversational_data(models, tmp_path):
    from alignscope.judges.reward_model import RewardModelConfig, train_reward_model

    chat = write_jsonl(tmp_path / "m.jsonl", rows_in("chat"))
    with pytest.raises(InputError, match=r"m.jsonl: a reward model is trained on plain-text preference pairs"):
        train_reward_model(RewardModelConfig(output_dir=str(tmp_path / "rm"), backbone=str(models["plain"]),
                                             data=DataConfig(source=str(chat))))


def test_the_chat_format_is_refused_for_a_model_without_a_template(models):
    from alignscope.generate import generate_cached

    with pytest.raises(InputError, match=rf"{models['plain']} has no chat template"):
        generate_cached(str(models["plain"]), ["\n\nHuman: Hi\n\nAssistant:"], chat=True)


def test_the_shipped_own_data_example_study_runs_end_to_end(models, tmp_path):
    """examples/own-data/study.yaml as shipped, with tiny models and HH prompts swapped in from
    the command line: both variants train on the shipped file, in the chat model's template."""
    from conftest import write_hh
    from test_study import rows
    from tiny import tiny_deberta_rm

    for kind, subset in (("harmful", "harmless-base"), ("helpful", "helpful-base")):
        write_hh(tmp_path / "hh", subset, "test", rows(kind, 20))
    judge = tiny_deberta_rm(tmp_path / "rm", [r["chosen"] for r in rows("harmful", 20) + rows("helpful", 20)])
    out = tmp_path / "out"
    env = {**os.environ, "ALIGNSCOPE_CACHE": str(tmp_path / "cache"), "ALIGNSCOPE_QUIET": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "alignscope", "study", "examples/own-data/study.yaml",
                           f"output_dir={out}", f"data={tmp_path / 'hh'}", "reference=null",
                           f"models=[{{name: tiny, model: {models['chat']}}}]",
                           f"judge={{model: {judge}, max_length: 128}}", "evalset.n_harmful=6",
                           "evalset.n_helpful=6", "evalset.keywords=[kill]"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    shipped = [f"pairs.jsonl:{i}" for i in range(1, 17)]
    for variant in ("sft", "dpo"):
        manifest = json.loads((out / "models" / "tiny" / variant / "data_manifest.json").read_text())
        assert sorted(manifest["rows"], key=lambda r: int(r.split(":")[1])) == shipped
        assert (ROOT / manifest["files"][0]["path"]).resolve() == ROOT / "examples" / "own-data" / "pairs.jsonl"
        assert manifest["chat_template_sha256"]
    generation = json.loads((out / "answers" / "tiny" / "3_dpo_generation.json").read_text())
    assert generation["settings"]["prompt_format"] == "chat"
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "sft", "dpo"]
    assert "pairs of pairs.jsonl" in (out / "report.md").read_text()


def test_hh_rlhf_reads_as_before_and_as_messages_on_request(tmp_path):
    from alignscope.data import data_fingerprint
    from conftest import dialogue, write_hh

    write_hh(tmp_path / "hh", "harmless-base", "train", [
        {"chosen": dialogue("Hi", "Hello.", "Sky?") + "\n\nAssistant: Blue.",
         "rejected": dialogue("Hi", "Hello.", "Sky?") + "\n\nAssistant: Green."}])
    cfg = DataConfig(source=str(tmp_path / "hh"), subsets=["harmless-base"])
    pair = load_pairs(cfg).pairs[0]
    assert (pair.id, pair.chosen) == ("harmless-base/train/1", " Blue.")
    assert pair.prompt == "Human: Hi\n\nAssistant: Hello.\n\nHuman: Sky?\n\nAssistant:"
    # the settings added for other data leave HH-RLHF recipes' fingerprints (and so finished runs) as they were
    assert set(data_fingerprint(cfg)) == {"source", "subsets", "split", "strict", "drop_identical", "drop_empty",
                                          "drop_duplicate_prompts", "limit", "exclude_prompts_of"}
    chat = load_pairs(DataConfig(source=str(tmp_path / "hh"), subsets=["harmless-base"], as_messages=True)).pairs[0]
    assert chat.prompt == [USER("Hi"), ASSISTANT("Hello."), USER("Sky?")]
    assert (chat.chosen, chat.rejected, chat.id) == ([ASSISTANT("Blue.")], [ASSISTANT("Green.")], pair.id)
