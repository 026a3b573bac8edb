"""Reward-model scoring on a tiny DeBERTa-v2 built from a config, and the local reward model."""

import json

import pytest

from alignscope.cache import ResultCache
from alignscope.data import DataConfig
from alignscope.io import InputError
from alignscope.judges import RM_MANIFEST, RewardModel, encode_pair
from alignscope.judges.score import ScoreConfig, rate_folder
from conftest import write_hh
from tiny import hh_pairs, tiny_deberta_rm

QUESTIONS = ["Human: How do I boil an egg?\n\nAssistant:", "Human: Hi\n\nAssistant:",
             "Human: " + "Tell me more about the weather and the sea. " * 40 + "\n\nAssistant:",
             "Human: What is two plus two?\n\nAssistant:"]
ANSWERS = ["Put it in boiling water for nine minutes.", "", "The sea is calm today.", "Four."]


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    folder = tiny_deberta_rm(tmp_path_factory.mktemp("rm") / "model", QUESTIONS * 5 + ANSWERS * 5)
    judge = RewardModel(str(folder))
    return folder, judge, judge.tokenizer


def test_pairs_are_encoded_as_the_model_card_says_and_the_question_is_cut_first(rm):
    _, _, tok = rm
    assert encode_pair(tok, QUESTIONS[0], ANSWERS[0], 512).ids == tok(QUESTIONS[0], ANSWERS[0])["input_ids"]
    long = encode_pair(tok, QUESTIONS[2], ANSWERS[2], 64).ids
    answer = tok(ANSWERS[2], add_special_tokens=False)["input_ids"]
    assert len(long) == 64 and long[-len(answer) - 1:-1] == answer  # the whole answer, then [SEP]
    question_end = tok(QUESTIONS[2], add_special_tokens=False)["input_ids"][-5:]
    assert long[-len(answer) - 7:-len(answer) - 2] == question_end  # the question keeps its end


def test_batched_scores_are_in_input_order_and_equal_single_scores(rm):
    _, judge, _ = rm
    batched, _ = judge.rate(QUESTIONS, ANSWERS, max_length=128, batch_size=3)
    single = [judge.rate([q], [a], max_length=128, batch_size=1)[0][0] for q, a in zip(QUESTIONS, ANSWERS)]
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(x, 6) for x in batched)) == len(batched)  # distinct pairs, distinct scores


def test_rate_folder_writes_rated_files_and_caches_scores(rm, tmp_path):
    folder, _, _ = rm
    answers = tmp_path / "answers"
    answers.mkdir()
    for i, name in ((1, "base"), (2, "sft")):
        for cat in ("harmful", "helpful"):
            rows = [{"id": f"x/{k}", "prompt": q.replace("Human:", f"Human: ({cat})"),
                     "response": a if i == 1 else a.upper(), "tokens": 3, "stop": "eos"}
                    for k, (q, a) in enumerate(zip(QUESTIONS, ANSWERS))]
            (answers / f"{i}_{name}_{cat}.json").write_text(json.dumps(rows))
    cache = ResultCache(tmp_path / "cache")
    cfg = ScoreConfig(model=str(folder), max_length=128)
    info = rate_folder(answers, tmp_path / "rated", cfg, cache)
    assert info["empty_answers"] == 4  # empty answers are scored, not dropped ...
    assert (info["computed"], info["repeated"]) == (14, 2)  # ... once per prompt: base's and sft's are the same
    rated = json.loads((tmp_path / "rated" / "2_sft_helpful.json").read_text())
    assert [r["response"] for r in rated] == [a.upper() for a in ANSWERS] and all("rating" in r for r in rated)
    from alignscope.answers import load_rated_dir

    assert [m.name for m in load_rated_dir(tmp_path / "rated")] == ["base", "sft"]
    again = rate_folder(answers, tmp_path / "rated2", cfg, cache)
    assert again["computed"] == 0
    assert json.loads((tmp_path / "rated2" / "2_sft_helpful.json").read_text()) == rated

    # killed while rating the second chunk: the first chunk's ratings are in the cache
    from alignscope.judges.score import CHUNK_BATCHES

    class Killed(Exception):
        pass

    rated_so_far = []

    def die_in_the_second_chunk(n: int) -> None:
        rated_so_far.append(n)
        if sum(rated_so_far) > CHUNK_BATCHES:
            raise Killed

    fresh = ResultCache(tmp_path / "cache-killed")
    one_at_a_time = ScoreConfig(model=str(folder), max_length=128, batch_size=1)
    with pytest.raises(Killed):
        rate_folder(answers, tmp_path / "rated3", one_at_a_time, fresh, die_in_the_second_chunk)
    resumed = rate_folder(answers, tmp_path / "rated3", one_at_a_time, fresh)
    assert (resumed["cached"], resumed["computed"]) == (CHUNK_BATCHES, 14 - CHUNK_BATCHES)
    assert [r["rating"] for r in json.loads((tmp_path / "rated3" / "2_sft_helpful.json").read_text())] == \
        pytest.approx([r["rating"] for r in rated], abs=1e-5)


def test_a_pair_that_recurs_across_files_is_rated_once_with_the_rating_it_gets_alone(rm, tmp_path):
    """A variant that kept most of the base's answers: its repeated answers cost no rating, counted
    as rows through the real reward model, and get the ratings of the base's file rated alone."""
    import torch

    folder, _, _ = rm
    answers = tmp_path / "answers"
    answers.mkdir()
    changed = ["Boil it.", *ANSWERS[1:]]  # one answer changed; the reward model's ratings ignore the category
    for name, replies in (("1_base_helpful", ANSWERS), ("1_base_harmful", ANSWERS), ("2_dpo_helpful", changed)):
        (answers / f"{name}.json").write_text(json.dumps([{"prompt": q, "response": a}
                                                          for q, a in zip(QUESTIONS, replies)]))
    rated_rows = []

    def count_rows(module, args, output):  # every forward of any module: the reward model's count its rows
        if type(module).__name__ == "DebertaV2ForSequenceClassification":
            rated_rows.append(len(output.logits))

    cfg = ScoreConfig(model=str(folder), max_length=128)
    handle = torch.nn.modules.module.register_module_forward_hook(count_rows)
    try:
        info = rate_folder(answers, tmp_path / "rated", cfg)
    finally:
        handle.remove()
    assert sum(rated_rows) == 5 and (info["computed"], info["repeated"]) == (5, 7)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "1_base_helpful.json").write_text((answers / "1_base_helpful.json").read_text())
    rate_folder(alone, tmp_path / "rated-alone", cfg)
    base = [r["rating"] for r in json.loads((tmp_path / "rated-alone" / "1_base_helpful.json").read_text())]
    for name in ("1_base_helpful", "1_base_harmful"):
        assert [r["rating"] for r in json.loads((tmp_path / "rated" / f"{name}.json").read_text())] == \
            pytest.approx(base, abs=1e-5)
    dpo = [r["rating"] for r in json.loads((tmp_path / "rated" / "2_dpo_helpful.json").read_text())]
    assert dpo[1:] == pytest.approx(base[1:], abs=1e-5)
    assert dpo[0] == pytest.approx(rm[1].rate(QUESTIONS[:1], changed[:1], max_length=128)[0][0], abs=1e-5)


def test_a_reward_model_refuses_prompts_it_was_trained_on(rm, tmp_path):
    import shutil

    folder = tmp_path / "trained-rm"
    shutil.copytree(rm[0], folder)
    (folder / RM_MANIFEST).write_text(json.dumps({"trained_openings": ["How do I boil an egg?"]}))
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "1_base_helpful.json").write_text(json.dumps([{"prompt": QUESTIONS[0], "response": "x"}]))
    with pytest.raises(InputError, match="was trained on 1 of these prompts' dialogues"):
        rate_folder(answers, tmp_path / "rated", ScoreConfig(model=str(folder)))


def test_a_classifier_with_more_than_one_output_is_refused(rm, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder, _, tok = rm
    config = AutoConfig.from_pretrained(folder)
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "two")
    tok.save_pretrained(tmp_path / "two")
    with pytest.raises(InputError, match="has 2 outputs; expected one logit"):
        RewardModel(str(tmp_path / "two"))


@pytest.mark.slow
def test_train_rm_on_minilm_records_its_rows_and_heldout_accuracy(tmp_path):
    from alignscope.judges.reward_model import RewardModelConfig, RewardTrainingSettings, train_reward_model
    from alignscope.judges import check_not_trained_on

    write_hh(tmp_path / "data", "harmless-base", "train", hh_pairs(40))
    cfg = RewardModelConfig(output_dir=str(tmp_path / "rm"), backbone="all-minilm-l6-v2",
                            data=DataConfig(source=str(tmp_path / "data"), subsets=["harmless-base"]),
                            heldout_fraction=0.25,
                            training=RewardTrainingSettings(max_steps=6, per_device_batch_size=8, learning_rate=1e-3,
                                                            max_length=64, logging_steps=1))
    manifest = train_reward_model(cfg)
    assert manifest["trained_pairs"] == 30 and manifest["heldout_pairs"] == 10
    assert not set(manifest["trained_rows"]) & set(manifest["heldout_rows"])
    losses = [x["loss"] for x in manifest["train_log"] if "loss" in x]
    assert losses[-1] < losses[0] and manifest["heldout_accuracy"] == 1.0  # the synthetic preference is easy
    saved = json.loads((tmp_path / "rm" / "model" / RM_MANIFEST).read_text())
    assert saved["trained_rows"] == manifest["trained_rows"]
    trained_prompt = f"Human: {saved['trained_openings'][0]}\n\nAssistant:"
    with pytest.raises(InputError, match="was trained on"):
        check_not_trained_on(str(tmp_path / "rm" / "model"), [trained_prompt])
    assert train_reward_model(cfg)["config_hash"] == manifest["config_hash"]  # finished: skipped


def test_an_answer_longer_than_the_limit_keeps_its_start_and_the_cut_is_recorded(rm):
    _, _, tok = rm
    answer = "The sea is calm. " * 200
    pair = encode_pair(tok, QUESTIONS[0], answer, 48)
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
    question_ids = tok(QUESTIONS[0], add_special_tokens=False)["input_ids"]
    assert len(pair.ids) == 48 and pair.ids[0] == tok.cls_token_id and pair.ids[-1] == tok.sep_token_id
    kept_question = (48 - 3) // 4  # the question's last quarter of the budget ...
    assert pair.ids[1:1 + kept_question] == question_ids[-kept_question:]
    kept_answer = 48 - 3 - kept_question  # ... and the answer's start, never its end
    assert pair.ids[2 + kept_question:-1] == answer_ids[:kept_answer]
    assert pair.answer_tokens_cut == len(answer_ids) - kept_answer


def test_score_on_a_full_disk_is_an_error_and_leaves_a_folder_no_reader_takes_for_whole(rm, tmp_path, monkeypatch):
    import errno
    import os

    from alignscope.answers import load_rated_dir

    folder, _, _ = rm
    answers = tmp_path / "answers"
    answers.mkdir()
    for i, name in ((1, "base"), (2, "sft")):
        for cat in ("harmful", "helpful"):
            rows = [{"prompt": q, "response": a} for q, a in zip(QUESTIONS, ANSWERS)]
            (answers / f"{i}_{name}_{cat}.json").write_text(json.dumps(rows))
    fsync, calls = os.fsync, []

    def disk_full_at_the_third_file(fd):  # the record, one rated file, then no space
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_at_the_third_file)
    out = tmp_path / "rated"
    with pytest.raises(InputError, match=r"1_base_helpful.json: cannot write \(No space left on device\)"):
        rate_folder(answers, out, ScoreConfig(model=str(folder), max_length=128))
    monkeypatch.setattr(os, "fsync", fsync)
    assert sorted(p.name for p in out.iterdir()) == ["scoring.json"]  # no rated file of this run is left
    with pytest.raises(InputError, match="began this folder and did not finish .*missing: 1_base_harmful.json, "
                                         "1_base_helpful.json, 2_sft_harmful.json, 2_sft_helpful.json"):
        load_rated_dir(out)
    rate_folder(answers, out, ScoreConfig(model=str(folder), max_length=128))  # a rerun finishes it
    assert [m.name for m in load_rated_dir(out)] == ["base", "sft"]
