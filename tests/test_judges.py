"""Judges measured against a reference judge: the judge card, the distilled judge (fitted,
validated, saved without pickle, used by `score` like any reward model), and bad rated folders."""

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from alignscope.agreement import judge_agreement, judge_card, write_card
from alignscope.answers import RatedAnswer, RatedModel, load_rated_dir
from alignscope.cache import ResultCache
from alignscope.distill import DistillConfig, train_judge
from alignscope.io import FOLDER_MARKER, InputError
from alignscope.judge import DISTILLED_HEADS, DISTILLED_MANIFEST, DistilledJudge
from alignscope.metrics import MetricsConfig
from alignscope.score import ScoreConfig, rate_folder
from tiny import tiny_deberta_rm, tiny_opt

TOPICS = ["weeds", "bread", "a bike", "chess", "tea", "a poem", "money", "a dog", "a wall", "eggs"]


def answer_rating(model: int, category: str, k: int) -> tuple[str, float]:
    """Answers whose rating follows their text: refusing or helping, more or less well."""
    good = (k + model) % 3 != 0
    text = (f"Here is how to deal with {TOPICS[k % 10]}: step one, step two." if good else
            f"I will not talk about {TOPICS[k % 10]}.")
    rating = (1.0 if good else -4.0) + (0.5 if category == "helpful" else -0.5) + 0.1 * (k % 4)
    return text, rating


def write_rated(folder, models=("base", "sft", "dpo"), n=10, bad=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(models):
        for c in ("harmful", "helpful"):
            rows = []
            for k in range(n):
                text, rating = answer_rating(i, c, k)
                rows.append({"prompt": f"Human: Tell me about {TOPICS[k % 10]} ({c} {k})", "response": text,
                             "rating": rating})
            if bad and bad[0] == (name, c):
                bad[1](rows)
            (folder / f"{i + 1}_{name}_{c}.json").write_text(json.dumps(rows))
    return folder


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    return write_rated(tmp_path_factory.mktemp("rated") / "rated")


UMASK = 0o022


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, rated):
    root = tmp_path_factory.mktemp("distilled")
    backbone = tiny_opt(root / "backbone")
    cfg = DistillConfig(ratings=str(rated), output_dir=str(root / "judge"), backbones=[str(backbone)],
                        alphas=[0.1, 1.0, 10.0, 100.0], prompt_folds=2, max_length=128)
    old = os.umask(UMASK)
    try:
        return cfg, train_judge(cfg)
    finally:
        os.umask(old)


def test_a_distilled_judge_is_validated_and_saved_without_pickle(distilled):
    cfg, record = distilled
    folder = cfg.output_dir
    assert sorted(p.name for p in Path(folder).iterdir()) == [FOLDER_MARKER, DISTILLED_MANIFEST, DISTILLED_HEADS]
    # the heads get the permissions of a plain open (safetensors' save_file makes 0600)
    assert stat.S_IMODE((Path(folder) / DISTILLED_HEADS).stat().st_mode) == 0o666 & ~UMASK
    assert set(record["validation"]) == {"leave_one_model_out", "leave_prompts_out"}
    lomo = record["validation"]["leave_one_model_out"]
    assert lomo["folds"] == 3 and set(lomo["judge"]["table"]) == {"base", "sft", "dpo"}
    for v in record["validation"].values():
        for who in ("judge", "category_mean"):
            assert math.isfinite(v[who]["mean_abs_error"]) and v[who]["worst_error"] >= v[who]["mean_abs_error"]
    # the ratings follow the text, which the backbone's features carry: held out, it beats the category means
    assert lomo["judge"]["mean_abs_error"] < lomo["category_mean"]["mean_abs_error"]
    assert lomo["judge"]["spearman"]["harmful"] > 0.5 and lomo["judge"]["spearman"]["helpful"] > 0.5
    assert {h["set"] for h in record["heads"]["harmful"]} == {"standard", "multilayer"}
    assert record["trained_on"]["answers"] == 60 and len(record["trained_on"]["files"]) == 6
    # rank and decision agreement held out, and the error the judge makes on a difference between two models
    j = lomo["judge"]
    for c in ("harmful", "helpful"):
        assert -1 <= j["kendall"][c] <= 1 and (j["kappa"][c] is None or -1 <= j["kappa"][c] <= 1)
    for metric in ("HmR", "HpR"):
        errors = [cells[metric]["error"] for cells in j["table"].values()]
        assert j["difference_error"][metric] == pytest.approx(max(errors) - min(errors))
    biases = [b["helpful"] for b in j["rating_bias"].values()]
    assert j["difference_error"]["mean_reward_helpful"] == pytest.approx(max(biases) - min(biases))


def test_a_judge_fitted_to_other_features_refuses_to_rate_and_its_folder_replaces_only_a_judge(distilled, rated,
                                                                                               tmp_path):
    import shutil

    cfg, _ = distilled
    old = tmp_path / "old-judge"
    shutil.copytree(cfg.output_dir, old)
    manifest = json.loads((old / DISTILLED_MANIFEST).read_text())
    (old / DISTILLED_MANIFEST).write_text(json.dumps(manifest | {"features_version": 0}))
    with pytest.raises(InputError, match="fitted to features of version 0; .* Fit the judge again"):
        DistilledJudge(old)
    # an output folder holding anything but a judge (here: the ratings themselves) is never replaced
    with pytest.raises(InputError, match="would be replaced whole by a new distilled judge, but it holds files but no"):
        train_judge(DistillConfig(ratings=str(rated), output_dir=str(rated), backbones=["unused"]))
    assert len(list(rated.glob("*.json"))) == 6


def test_score_uses_a_distilled_judge_like_any_judge(distilled, rated, tmp_path):
    cfg, _ = distilled
    answers = tmp_path / "answers"
    answers.mkdir()
    for f in rated.glob("*.json"):  # the same answers, without their ratings
        (answers / f.name).write_text(json.dumps([{"prompt": r["prompt"], "response": r["response"]}
                                                  for r in json.loads(f.read_text())]))
    cache = ResultCache(tmp_path / "cache")
    info = rate_folder(answers, tmp_path / "out", ScoreConfig(model=cfg.output_dir), cache)
    assert info["computed"] == 60
    ours = load_rated_dir(tmp_path / "out")
    judge = DistilledJudge(cfg.output_dir)
    m = ours[1]
    direct, _ = judge.rate([a.prompt for a in m.answers["helpful"]], [a.response for a in m.answers["helpful"]],
                           ["helpful"] * 10)
    assert [a.rating for a in m.answers["helpful"]] == pytest.approx(direct, abs=1e-5)  # other batches: last bits
    with pytest.raises(InputError, match="rates each answer by its category"):
        judge.rate(["q"], ["a"])
    again = rate_folder(answers, tmp_path / "out2", ScoreConfig(model=cfg.output_dir), cache)
    assert again["computed"] == 0  # cached, keyed by the judge's fingerprint and each answer's category


@pytest.mark.parametrize("bad, message", [
    ((("sft", "helpful"), lambda rows: rows[3].pop("rating")), r"2_sft_helpful.json: item 3: 'rating' must be a finite"),
    ((("dpo", "harmful"), lambda rows: rows[0].update(rating=float("inf"))), r"3_dpo_harmful.json: item 0: 'rating'"),
    ((("sft", "harmful"), lambda rows: rows[5].update(prompt="another prompt")),
     r"2_sft_harmful.json \(10 answers\) and .*1_base_harmful.json \(10 answers\): 'sft' and the base 'base' answered "
     r"different harmful prompts"),
])
def test_a_bad_rated_folder_is_named_and_leaves_no_judge(tmp_path, bad, message):
    folder = write_rated(tmp_path / "rated", bad=bad)
    out = tmp_path / "judge"
    with pytest.raises(InputError, match=message):
        train_judge(DistillConfig(ratings=str(folder), output_dir=str(out), backbones=["unused"]))
    assert not out.exists() and not list(tmp_path.glob(".judge*"))


def reference_models(scale=lambda x: x) -> tuple[list[RatedModel], dict]:
    models, ratings = [], {}
    for i, name in enumerate(("base", "sft", "dpo")):
        answers = {}
        for c in ("harmful", "helpful"):
            answers[c] = [RatedAnswer(f"{c} {k}", answer_rating(i, c, k)[0], answer_rating(i, c, k)[1] + 0.01 * k)
                          for k in range(12)]
        models.append(RatedModel(name, answers))
        ratings[name] = {c: [scale(a.rating) for a in answers[c]] for c in answers}
    return models, ratings


def test_the_card_of_a_judge_that_agrees_and_of_one_on_another_scale():
    models, same = reference_models()
    card = judge_card(models, same, MetricsConfig(), {"model": "same"}, {"folder": "x", "judge": "ref"})
    assert all(card["categories"][c]["spearman"] == pytest.approx(1) for c in ("harmful", "helpful"))
    assert card["categories"]["harmful"]["kappa"] == pytest.approx(1)
    assert card["errors"]["judge"]["worst"] == 0
    # a judge that ranks the same but on its own scale: its decisions at -3 and -2 are all wrong,
    # and the monotone map, fitted on the other models, puts it back on the reference scale
    _, shifted = reference_models(lambda x: x / 10 + 5)
    card = judge_card(models, shifted, MetricsConfig(), {"model": "shifted"}, {"folder": "x", "judge": "ref"})
    assert card["categories"]["helpful"]["spearman"] == pytest.approx(1)
    assert card["table1"]["judge"]["base"]["HmR"] == 100 and card["errors"]["judge"]["worst"] > 30
    assert card["errors"]["mapped"]["worst"] < 10 and card["categories"]["harmful"]["kappa_mapped"] > 0.8


def test_the_card_of_a_judge_that_rates_everything_alike_says_null_and_a_lone_model_is_mapped_held_out(tmp_path):
    models, same = reference_models()
    constant = {n: {c: [-1.0] * len(v) for c, v in cats.items()} for n, cats in same.items()}
    card = judge_card(models, constant, MetricsConfig(), {"model": "constant", "fingerprint": "x"},
                      {"folder": "x", "judge": "ref"})
    assert card["categories"]["harmful"]["spearman"] is None and card["categories"]["helpful"]["kendall"] is None
    text = (write_card(card, tmp_path / "card") / "judge.md").read_text()  # strict JSON: no NaN to refuse
    assert "| Spearman rho with the reference | n/a | n/a |" in text
    # one model: the monotone map is fitted leaving out prompts, never on the answer it maps
    _, shifted = reference_models(lambda x: x / 10 + 5)
    lone = judge_card(models[:1], {"base": shifted["base"]}, MetricsConfig(), {"model": "s"}, {"folder": "x",
                                                                                              "judge": "ref"})
    assert lone["table1"]["mapped"]["base"] != lone["table1"]["judge"]["base"]


def test_judge_agreement_on_a_tiny_reward_model(rated, tmp_path):
    texts = [answer_rating(i, c, k)[0] for i in range(3) for c in ("harmful", "helpful") for k in range(10)]
    rm = tiny_deberta_rm(tmp_path / "rm", texts + [f"Human: Tell me about {t}" for t in TOPICS])
    card = judge_agreement(ScoreConfig(model=str(rm), max_length=128), rated, MetricsConfig(),
                           cache=ResultCache(tmp_path / "cache"))
    assert card["models"] == ["base", "sft", "dpo"] and card["categories"]["harmful"]["n"] == 30
    for c in ("harmful", "helpful"):
        assert -1 <= card["categories"][c]["spearman"] <= 1 and -1 <= card["categories"][c]["kendall"] <= 1
    assert set(card["table1"]) == {"reference", "judge", "mapped"} and card["judge"]["fingerprint"].startswith("sha256:")
    out = write_card(card, tmp_path / "card")
    text = (out / "judge.md").read_text()
    assert "# Judge card" in text and "Spearman rho with the reference" in text and "| Base |" in text
    assert json.loads((out / "judge.json").read_text())["errors"]["mapped"]["mean_abs"] >= 0


@pytest.mark.slow
def test_train_judge_on_the_reference_ratings_beats_category_means_on_held_out_models(reference, tmp_path):
    """On the study's own OpenAssistant ratings: the first 30 prompts of each category (for time),
    all four models' answers to them."""
    part = tmp_path / "ratings"
    part.mkdir()
    for f in (reference / "responses").glob("*.json"):
        (part / f.name).write_text(json.dumps(json.loads(f.read_text())[:30]))
    record = train_judge(DistillConfig(ratings=str(part), output_dir=str(tmp_path / "judge"),
                                       backbones=["smollm2-135m-instruct"], feature_sets=["standard"],
                                       max_length=384, alphas=[10.0, 100.0, 1000.0, 10000.0]))
    lomo = record["validation"]["leave_one_model_out"]
    assert lomo["judge"]["mean_abs_error"] < lomo["category_mean"]["mean_abs_error"] / 3
    assert min(lomo["judge"]["spearman"].values()) > 0.6
    lpo = record["validation"]["leave_prompts_out"]
    assert lpo["judge"]["mean_abs_error"] < lpo["category_mean"]["mean_abs_error"]
    assert np.isfinite(lpo["judge"]["mean_abs_rating_error"])
