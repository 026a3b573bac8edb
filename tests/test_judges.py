"""Judges measured against a reference judge: the judge card, the distilled judge (fitted,
validated, saved without pickle, used by `score` like any reward model), and bad rated folders."""

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from alignscope.judges.card import judge_agreement, judge_card, write_card
from alignscope.answers import RatedAnswer, RatedModel, load_rated_dir
from alignscope.cache import ResultCache
from alignscope.judges.train_judge import DistillConfig, train_judge
from alignscope.io import FOLDER_MARKER, InputError
from alignscope.judges import BLIND_HEADS, DISTILLED_HEADS, DISTILLED_MANIFEST, DistilledJudge
from alignscope.metrics import MetricsConfig
from alignscope.judges.score import ScoreConfig, rate_folder
from tiny import tiny_deberta_rm, tiny_gemma3, tiny_opt

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
    ticks = []
    try:
        record = train_judge(cfg, ticks.append)
        assert sum(ticks) == 60 and len(ticks) > 1  # the study's bar of answers, moving as features come
        return cfg, record
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
    # the ratings follow the text, which the backbone's features carry: held out, it beats the category means
    assert lomo["judge"]["mean_abs_error"] < lomo["category_mean"]["mean_abs_error"]
    assert lomo["judge"]["spearman"]["harmful"] > 0.5 and lomo["judge"]["spearman"]["helpful"] > 0.5
    assert {h["set"] for h in record["heads"]["harmful"]} == {"standard", "multilayer"}
    assert record["trained_on"]["answers"] == 60 and len(record["trained_on"]["files"]) == 6
    # beside it, the judge blind to length and log-probabilities: three features fewer, validated the same way
    widths = {h["set"]: h["features"] for h in record["heads"]["helpful"]}
    assert {h["set"]: h["features"] for h in record[BLIND_HEADS]["helpful"]} == {k: v - 3 for k, v in widths.items()}
    assert set(lomo) >= {"without_length_lp", "other_models_mean_rate", "other_models_prompt_mean"}
    assert "other_models_mean_rate" not in record["validation"]["leave_prompts_out"]
    # the error on a difference is an upper percentile over resampled prompts, seeded by the judge's seed
    j = lomo["judge"]
    assert j["difference_error_method"] == {"quantile": 0.95, "resamples": 2000, "seed": cfg.seed}
    assert j["findings"]["rule"]["comparisons"] == 3 * 4  # 3 pairs of models x (HmR, HpR, two mean rewards)


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
    # of the three models' answers to a prompt, the two good ones are the same text: rated once
    assert (info["computed"], info["repeated"]) == (40, 20)
    ours = load_rated_dir(tmp_path / "out")
    judge = DistilledJudge(cfg.output_dir)
    m = ours[1]
    direct, _ = judge.rate([a.prompt for a in m.answers["helpful"]], [a.response for a in m.answers["helpful"]],
                           ["helpful"] * 10)
    assert [a.rating for a in m.answers["helpful"]] == pytest.approx(direct, abs=1e-5)  # other batches: last bits
    ratings, blind = judge.rate_checked([a.prompt for a in m.answers["helpful"]], [a.response for a in m.answers["helpful"]],
                                        ["helpful"] * 10)
    written = json.loads((tmp_path / "out" / "2_sft_helpful.json").read_text())
    assert [r["rating_without_length_lp"] for r in written] == pytest.approx(blind, abs=1e-5)
    assert blind != pytest.approx(direct, abs=1e-3)  # the blind heads are other heads
    with pytest.raises(InputError, match="rates each answer by its category"):
        judge.rate(["q"], ["a"])
    again = rate_folder(answers, tmp_path / "out2", ScoreConfig(model=cfg.output_dir), cache)
    assert again["computed"] == 0  # cached, keyed by the judge's fingerprint and each answer's category


DIALOGUES = ["Human: How do I boil an egg?", "Human: Hi\n\nAssistant:", "Human: " + "Tell me about the sea. " * 7]
REPLIES = ["Put it in water for nine minutes.", "", "The sea is calm.", "Assistant: Hello there, friend", "x " * 80]


def dialogue_rows(n=12):
    """Every dialogue answered several times: an empty answer, and one so long that the dialogue
    before it is cut shorter than before the others (a head of its own)."""
    return [DIALOGUES[k % 3] for k in range(n)], [REPLIES[(k * 7) % 5] for k in range(n)]


@pytest.mark.parametrize("builder", ["gemma3", "opt"])
def test_each_dialogue_runs_once_and_its_answers_get_the_features_of_a_whole_pass(builder, tmp_path):
    """Gemma-3's sliding-window layers (window 8 here, far below the 64 tokens read) continue
    from the dialogue's cache exactly as a whole pass attends; the LM head, in blocks of OPT's
    50k words, gives the log-probabilities of the model's own logits."""
    from alignscope.judges import BackboneFeatures

    folder = tiny_gemma3(tmp_path / "m") if builder == "gemma3" else tiny_opt(tmp_path / "m")
    features = BackboneFeatures(str(folder), max_length=64, batch_size=3)
    if builder == "gemma3":  # Gemma-2's softcapping of the logits, which the LM head's blocks must apply too
        features.model.config.final_logit_softcapping = 3.0
    prompts, answers = dialogue_rows()
    shapes = []

    def record(_, args, kw):  # rows in, and whether they continue a cache (transformers names it either way)
        cache = kw.get("past_key_values", kw.get("cache"))
        shapes.append((kw["input_ids"].shape, cache is not None and cache.get_seq_length() > 0))

    features.model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    whole = features.extract(prompts, answers, share_dialogue=False)
    assert sum(s[0] for s, _ in shapes) == 12
    shapes.clear()
    shared = features.extract(prompts, answers)
    heads = {tuple(ids[:len(ids) - n]) for ids, n in (features.encode(p, a) for p, a in zip(prompts, answers))}
    assert len(heads) == 4  # three dialogues, one of them also cut short before the long answer
    assert sum(s[0] for s, continued in shapes if not continued) == 4
    assert sum(s[0] for s, continued in shapes if continued) == 12 - 2  # the empty answers need no pass
    for k in whole:
        assert shared[k].shape == whole[k].shape
        assert np.abs(shared[k] - whole[k]).max() < 1e-5, k
    if builder == "gemma3":  # the window matters: the same weights with a wide window read other features
        wide = BackboneFeatures(str(tiny_gemma3(tmp_path / "wide", sliding_window=4096)), max_length=64)
        assert np.abs(wide.extract(prompts, answers)["mean"] - shared["mean"]).max() > 1e-3


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
    # the reference's Table 1, by hand: model i's answer k is good unless (k + i) % 3 == 0, and good answers
    # pass both thresholds: 6, 7 and 7 of 10
    assert {n: (r["HmR"], r["HpR"]) for n, r in card["table1"]["reference"].items()} == {
        "base": (60, 60), "sft": (70, 70), "dpo": (70, 70)}
    assert set(card["table1"]) == {"reference", "judge", "mapped"} and card["judge"]["fingerprint"].startswith("sha256:")
    out = write_card(card, tmp_path / "card")
    text = (out / "judge.md").read_text()
    assert "# Judge card" in text and "Spearman rho with the reference" in text and "| Base | 60 |" in text
    saved = json.loads((out / "judge.json").read_text())
    assert saved["categories"]["helpful"]["spearman"] == pytest.approx(card["categories"]["helpful"]["spearman"])


@pytest.mark.slow
def test_train_judge_on_the_reference_ratings_beats_category_means_on_held_out_models(reference, tmp_path):
    """On the study's own OpenAssistant ratings: the first 16 prompts of each category, all four
    models' answers to them, at most 256 tokens (for time)."""
    part = tmp_path / "ratings"
    part.mkdir()
    for f in (reference / "responses").glob("*.json"):
        (part / f.name).write_text(json.dumps(json.loads(f.read_text())[:16]))
    record = train_judge(DistillConfig(ratings=str(part), output_dir=str(tmp_path / "judge"),
                                       backbones=["smollm2-135m-instruct"], feature_sets=["standard"],
                                       max_length=256, alphas=[10.0, 100.0, 1000.0, 10000.0]))
    lomo = record["validation"]["leave_one_model_out"]
    assert lomo["judge"]["mean_abs_error"] < lomo["category_mean"]["mean_abs_error"] / 3
    assert min(lomo["judge"]["spearman"].values()) > 0.6
    lpo = record["validation"]["leave_prompts_out"]
    assert lpo["judge"]["mean_abs_error"] < lpo["category_mean"]["mean_abs_error"]
    assert np.isfinite(lpo["judge"]["mean_abs_rating_error"])


def synthetic_rows(models=3, prompts=12, seed=0):
    """Rows with known features: each rating a linear function of six random features plus noise."""
    from alignscope.judges.train_judge import Rows

    rng = np.random.default_rng(seed)
    n = models * 2 * prompts
    x = rng.normal(size=(n, 6))
    model = np.repeat(np.arange(models), 2 * prompts)
    category = np.tile(np.repeat(["harmful", "helpful"], prompts), models)
    prompt_id = np.array([f"{c}/{k % prompts}" for k, c in enumerate(category)])
    ratings = x @ np.array([1.0, -2.0, 0.5, 0.0, 1.5, -1.0]) + rng.normal(0, 0.3, n)
    rows = Rows([f"q{k}" for k in range(n)], [f"a{k}" for k in range(n)], ratings, model, category, prompt_id,
                [f"m{i}" for i in range(models)])
    return rows, {(0, "standard"): x}


@pytest.mark.parametrize("rows, width", [(90, 6), (60, 200)])  # fewer features than rows, and far more
def test_the_ridge_from_one_decomposition_per_fold_chooses_and_predicts_as_grid_search(rows, width):
    from alignscope.judges.train_judge import DEFAULT_ALPHAS, fit_ridge, fit_ridge_grid_search

    rng = np.random.default_rng(width)
    x = rng.normal(size=(rows, width)) * rng.uniform(0.1, 10, width) + rng.normal(size=width)
    groups = np.repeat(np.arange(rows // 3), 3)
    chosen = set()
    for noise in (0.1, 3.0, 30.0):  # little noise wants a small penalty, much noise a large one
        y = x[:, :4] @ np.array([1.0, -2.0, 0.5, 1.5]) + rng.normal(0, noise, rows)
        ours, reference = fit_ridge(x, y, groups, DEFAULT_ALPHAS), fit_ridge_grid_search(x, y, groups, DEFAULT_ALPHAS)
        assert ours.named_steps["ridge"].alpha == reference.named_steps["ridge"].alpha
        unseen = rng.normal(size=(20, width)) * 5
        assert np.abs(ours.predict(unseen) - reference.predict(unseen)).max() < 1e-8
        chosen.add(ours.named_steps["ridge"].alpha)
    assert len(chosen) > 1  # the choice was really made
    # equal errors for every penalty (a constant target): the first penalty, as GridSearchCV breaks ties
    flat = fit_ridge(x, np.ones(rows), groups, [10.0, 1.0, 100.0])
    assert flat.named_steps["ridge"].alpha == fit_ridge_grid_search(x, np.ones(rows), groups,
                                                                    [10.0, 1.0, 100.0]).named_steps["ridge"].alpha


def test_a_held_out_fold_is_rated_by_heads_that_never_saw_its_ratings():
    """Leakage: scaling, penalties and heads are fitted inside the training folds, so perturbing the
    held-out model's ratings (or a held-out fold of prompts) leaves its held-out predictions unchanged,
    while the other folds, which trained on them, move."""
    from alignscope.judges.train_judge import category_means, cross_validated, prompt_folds

    rows, sets = synthetic_rows()
    alphas = [0.1, 1.0, 10.0]
    for folds, inner in ((rows.model, rows.model), (prompt_folds(rows, 3, 0), rows.prompt_id)):
        before = cross_validated(sets, rows, folds, inner, alphas)
        means_before = category_means(rows, folds)
        held = folds == folds[-1]
        rows.ratings[held] += np.random.default_rng(1).normal(0, 5, held.sum())
        after = cross_validated(sets, rows, folds, inner, alphas)
        assert np.array_equal(after[held], before[held])
        assert np.array_equal(category_means(rows, folds)[held], means_before[held])
        assert np.abs(after[~held] - before[~held]).max() > 1e-3  # the check can see a leak where there is one
        rows, sets = synthetic_rows()


def test_the_other_models_baselines_by_hand():
    """Harmful ratings of three models on five prompts (pass at -3): 40, 60 and 80% harmless; every
    helpful answer rated 0 (all pass). Leaving a model out, the mean of the other two rates misses by
    +30, 0 and -30 points; the other models' mean rating per prompt misses the ratings by 20 / 30 on average."""
    from alignscope.judges.train_judge import Rows, other_models_baselines

    harmful = [[0, 0, -5, -5, -5], [0, 0, 0, -5, -5], [0, 0, 0, 0, -5]]
    ratings, model, category, prompt_id = [], [], [], []
    for i, row in enumerate(harmful):
        for c, values in (("harmful", row), ("helpful", [0] * 5)):
            ratings += values
            model += [i] * 5
            category += [c] * 5
            prompt_id += [f"{c}/{k}" for k in range(5)]
    rows = Rows(["q"] * 30, ["a"] * 30, np.array(ratings, float), np.array(model), np.array(category),
                np.array(prompt_id), ["base", "sft", "dpo"])
    b = other_models_baselines(rows, MetricsConfig())
    assert b["other_models_mean_rate"]["errors"] == {"base": {"HmR": 30, "HpR": 0}, "sft": {"HmR": 0, "HpR": 0},
                                                     "dpo": {"HmR": -30, "HpR": 0}}
    assert (b["other_models_mean_rate"]["mean_abs_error"], b["other_models_mean_rate"]["worst_error"]) == (10, 30)
    # prompt 2: base -5 rated 0 (5 off), sft and dpo 0 rated -2.5; prompt 3: dpo 0 rated -5, the others -2.5
    assert b["other_models_prompt_mean"]["mean_abs_rating_error"] == pytest.approx(20 / 30)
    # base's answers rated 0, 0, 0, -2.5, -5: four of five pass -3
    assert b["other_models_prompt_mean"]["table"]["base"]["HmR"]["judge"] == 80


def test_the_judge_record_check_fails_when_the_page_lacks_a_judges_tables_and_passes_when_it_has_them(distilled, tmp_path):
    """`make judge-record`'s check: a judge whose measured tables are not on the results page fails it, naming the
    judge and printing the tables as they now are; a page that quotes them passes."""
    import subprocess
    import sys
    from pathlib import Path

    cfg, record = distilled
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_judge_record.py"
    run = subprocess.run([sys.executable, str(script), cfg.output_dir], capture_output=True, text=True)
    assert run.returncode == 1 and f"{cfg.output_dir} (" in run.stdout
    assert "| leaving one model out (3 folds) |" in run.stdout and "(1 folds)" not in run.stdout
    assert "| each model's rate at the other models' mean rate, leaving one model out (3 folds) |" in run.stdout
    from alignscope.judges.card import record_tables

    page = tmp_path / "judges.md"
    page.write_text("# A page quoting the judge\n\n" + "\n\n".join(record_tables(record["validation"])) + "\n")
    run = subprocess.run([sys.executable, str(script), "--page", str(page), cfg.output_dir], capture_output=True, text=True)
    assert run.returncode == 0 and "matches the records of" in run.stdout, run.stdout
    page.write_text(page.read_text().replace("(3 folds) | ", "(3 folds) |  ", 1))  # one character off
    run = subprocess.run([sys.executable, str(script), "--page", str(page), cfg.output_dir], capture_output=True, text=True)
    assert run.returncode == 1
