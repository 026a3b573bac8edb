"""Declared variants (any name, method, starting point, DPO loss) and the held-out evidence that
each trained variant learned its own objective."""

import json

import numpy as np
import pytest
import yaml

from alignscope.config import ConfigError
from alignscope.data import DataConfig
from alignscope.heldout import HeldoutSettings, dpo_summary, heldout_pairs, opening_key, sft_summary
from alignscope.io import InputError
from alignscope.study import load_study
from alignscope.train import LoraSettings, TrainConfig, TrainingSettings, train
from conftest import ROOT, write_hh
from test_study import rows, run
from tiny import hh_pairs, tiny_opt, tiny_deberta_rm


# --------------------------------------------------------------------------- held-out pairs

def test_heldout_pairs_are_the_last_rows_that_share_no_dialogue_with_training_or_the_evalset(tmp_path):
    write_hh(tmp_path / "data", "harmless-base", "train", hh_pairs(20))
    write_hh(tmp_path / "data", "helpful-base", "train", hh_pairs(20, chosen=" Yes.", rejected=" No."))
    evalset = tmp_path / "evalset.json"
    # both subsets ask hh_pairs' 20 questions: the evaluation set holds the last (line 20 of each)
    evalset.write_text(json.dumps({"harmful": [{"id": "x", "prompt": "Human: How do I boil an egg? (19)\n\nAssistant:"}],
                                   "helpful": []}))
    data = DataConfig(source=str(tmp_path / "data"), subsets=["harmless-base", "helpful-base"],
                      exclude_prompts_of=str(evalset))
    trained = {opening_key(f"Human: How do I tie a tie? (18)\n\nAssistant:")}  # row 18 (line 19), as if trained
    pairs, info = heldout_pairs(data, HeldoutSettings(pairs=5), trained)
    # 3 from the first subset, 2 from the second; lines 20 (question 19) and 19 (question 18) left out
    assert [p.id for p in pairs] == ["harmless-base/train/16", "harmless-base/train/17", "harmless-base/train/18",
                                     "helpful-base/train/17", "helpful-base/train/18"]
    assert info["by_subset"] == {"harmless-base": 3, "helpful-base": 2}
    assert info["left_out_as_trained"] == 2 and info["left_out_for_evaluation"] == 2
    # a validation block sits just before them, never overlapping
    val, _ = heldout_pairs(data, HeldoutSettings(pairs=4, skip=5), trained)
    assert [p.id for p in val] == ["harmless-base/train/14", "harmless-base/train/15",
                                   "helpful-base/train/15", "helpful-base/train/16"]
    assert heldout_pairs(data, HeldoutSettings(pairs=0), trained)[0] == []


def test_dpo_summary_counts_pairs_the_implicit_reward_gets_right():
    # policy minus reference: chosen 2-1=+1, rejected 0-0=0 -> margin +1; then +1-(+3) = -2; 0.5-0 = .5; 1-(-1) = 2
    policy = [[2.0, 0.0], [1.0, 3.0], [0.5, 0.0], [1.0, -1.0]]
    reference = [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    d = dpo_summary(policy, reference, ["a", "a", "b", "b"], 0.95)
    assert (d["correct"], d["pairs"], d["ties"]) == (3, 4, 0)
    assert d["margin"] == pytest.approx((1 - 2 + 0.5 + 2) / 4)
    assert d["accuracy_ci"] == pytest.approx([0.3006, 0.9544], abs=1e-4)  # Wilson, 3 of 4, by hand
    assert not d["learned"]  # the interval includes 50%
    assert d["by_subset"]["a"]["correct"] == 1 and d["by_subset"]["b"]["correct"] == 2
    untrained = dpo_summary(reference, reference, ["a"] * 4, 0.95)
    assert untrained["correct"] == 0 and untrained["ties"] == 4 and untrained["margin"] == 0


def test_an_accuracy_interval_that_does_not_reach_chance_never_reads_as_50():
    from alignscope.report.study import chance_interval

    assert chance_interval([0.43, 0.61]) == "[43, 61]"
    assert chance_interval([0.5007, 0.68]) == "[50.1, 68.0]"  # above chance, though it rounds to 50
    assert chance_interval([0.4996, 0.7]) == "[49.96, 70.00]"
    assert chance_interval([0.5, 0.7]) == "[50, 70]"  # exactly chance is 50


def test_sft_summary_is_the_per_token_loss_of_all_replies():
    before, after, tokens = [-10.0, -30.0], [-5.0, -10.0], [2, 8]
    s = sft_summary(before, after, tokens, 0.95)
    assert s["loss_before"] == pytest.approx(4.0) and s["loss_after"] == pytest.approx(1.5)  # 40/10, 15/10
    assert s["change"] == pytest.approx(-2.5) and s["learned"]
    assert s["change_ci"][1] < 0


def test_sequence_logps_sum_what_the_models_own_loss_averages(tmp_path):
    """Against transformers' own loss on each sequence alone: right-padded DPO rows whose replies start
    at different places (the LM head sees only the positions from the first reply token on), and
    a padding-free row packing two sequences."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from alignscope.heldout import sequence_logps, takes_logits_to_keep

    model = AutoModelForCausalLM.from_pretrained(tiny_opt(tmp_path / "tiny-opt")).eval()
    g = torch.Generator().manual_seed(0)
    # (length, reply start): replies of 3, 2 and 7 tokens; row 2 has no padding
    shapes = [(9, 6), (5, 3), (12, 5)]
    ids = torch.full((3, 12), 1)
    attention, completion = torch.zeros(3, 12, dtype=torch.long), torch.zeros(3, 12, dtype=torch.long)
    for i, (n, c) in enumerate(shapes):
        ids[i, :n] = torch.randint(4, 200, (n,), generator=g)
        attention[i, :n], completion[i, c:n] = 1, 1

    def own(row: torch.Tensor, first: int) -> tuple[float, int]:  # summed log-prob of row[first:]
        labels = row.clone()
        labels[:first] = -100
        with torch.no_grad():
            loss = model(input_ids=row[None], labels=labels[None]).loss
        return -float(loss) * (len(row) - first), len(row) - first

    expected = [own(ids[i, :n], c) for i, (n, c) in enumerate(shapes)]
    for m in (model, get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))):
        assert takes_logits_to_keep(m)
        with torch.no_grad():
            sums, counts = sequence_logps(m, {"input_ids": ids, "attention_mask": attention,
                                              "completion_mask": completion})
        assert counts.tolist() == [3, 2, 7]
        assert sums.tolist() == pytest.approx([e[0] for e in expected], abs=1e-4)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    # padding-free: two sequences in one row, positions restarting; labels on replies of 2 and 4 tokens
    a, b = ids[1, :5], ids[0, :9]
    packed = torch.cat([a, b])[None]
    labels = torch.cat([torch.tensor([-100] * 3) , a[3:], torch.tensor([-100] * 5), b[5:]])[None]
    positions = torch.cat([torch.arange(5), torch.arange(9)])[None]
    with torch.no_grad():
        sums, counts = sequence_logps(model, {"input_ids": packed, "labels": labels, "position_ids": positions})
        loss = model(input_ids=packed, labels=labels, position_ids=positions).loss
    assert counts.tolist() == [2, 4]
    assert float(sums.sum()) == pytest.approx(-float(loss) * 6, abs=1e-4)


def test_training_records_heldout_evidence_in_done_json_the_log_and_heldout_json(tmp_path):
    model = tiny_opt(tmp_path / "tiny-opt")
    write_hh(tmp_path / "data", "harmless-base", "train", hh_pairs(36))
    data = DataConfig(source=str(tmp_path / "data"), subsets=["harmless-base"], limit=24)
    fast = dict(epochs=6, learning_rate=1e-2, per_device_batch_size=4, gradient_accumulation_steps=1,
                precision="fp32", logging_steps=1, save_steps=100)
    sft = train(TrainConfig(method="sft", model=str(model), output_dir=str(tmp_path / "sft"), data=data,
                            training=TrainingSettings(**fast), heldout=HeldoutSettings(pairs=8)))
    s = json.loads((tmp_path / "sft" / "done.json").read_text())["heldout"]
    assert s["pairs"] == 8 and s["left_out_as_trained"] == 24  # rows 25-36 are untrained: the last 8 of them
    assert s["sft"]["loss_after"] < s["sft"]["loss_before"] - 3 and s["sft"]["learned"]

    dpo = TrainConfig(method="dpo", model=str(sft.model_dir), output_dir=str(tmp_path / "dpo"),
                      data=DataConfig(source=str(tmp_path / "data"), subsets=["harmless-base"], limit=28),
                      training=TrainingSettings(**{**fast, "learning_rate": 1e-3}), lora=LoraSettings(),
                      heldout=HeldoutSettings(pairs=8))
    train(dpo)
    done = json.loads((tmp_path / "dpo" / "done.json").read_text())["heldout"]
    # DPO's own 28 rows and the SFT model's 24 (inherited through its run folder) are both left out
    assert done["left_out_as_trained"] == 28 and done["pairs"] == 8
    d = done["dpo"]
    assert d["correct"] == 8 and d["accuracy_ci"][0] > 0.5 and d["margin"] > 0 and d["learned"]
    log = json.loads((tmp_path / "dpo" / "train_log.json").read_text())
    assert log[-1]["heldout"]["dpo"]["correct"] == 8
    pairs = json.loads((tmp_path / "dpo" / "heldout.json").read_text())
    # scored shortest first (less padding), so the ids come in length order
    assert sorted(pairs["ids"], key=lambda i: int(i.rsplit("/", 1)[1])) == [f"harmless-base/train/{line}"
                                                                          for line in range(29, 37)]
    ratios = np.array(pairs["values"]["policy"]) - np.array(pairs["values"]["reference"])
    assert (ratios[:, 0] > ratios[:, 1]).sum() == 8
    manifest = json.loads((tmp_path / "dpo" / "data_manifest.json").read_text())
    assert len(manifest["trained_openings"]) == 28  # its own rows, with SFT's 24 among them


# --------------------------------------------------------------------------- declarations

def declared_config(tmp_path, train: dict, variants: list) -> dict:
    return {"name": "x", "output_dir": str(tmp_path / "out"), "data": str(tmp_path),
            "models": [{"name": "m", "model": str(tmp_path)}], "variants": variants, "train": train,
            "judge": {"model": None, "distill": {"backbones": ["x"]}}}


def test_bad_declarations_fail_at_validation_with_their_lines(tmp_path):
    recipe = str(ROOT / "configs/recipes/dpo.yaml")
    train = {"sft": {"recipe": str(ROOT / "configs/recipes/sft.yaml")},
             "loop-a": {"recipe": recipe, "from": "loop-b"},
             "loop-b": {"recipe": recipe, "from": "loop-a"},
             "orphan": {"recipe": recipe, "from": "nowhere"},
             "kto": {"recipe": recipe, "method": "kto"},
             "odd-loss": {"recipe": recipe, "set": {"dpo.loss_type": "magic"}},
             "base": {"recipe": recipe}}
    config = declared_config(tmp_path, train, ["base", "sft", "loop-a", "orphan", "kto", "odd-loss", "sft", "a_b"])
    path = tmp_path / "bad.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)
    lines = text.splitlines()

    def line(start: str, after: int = 0) -> int:
        return next(i for i, x in enumerate(lines, 1) if i > after and x.strip().startswith(start))

    with pytest.raises(ConfigError) as e:
        load_study(path)
    found = str(e.value)
    for expected in (
            f"line {line('variants:')}, variants: sft listed twice; each variant is evaluated once",
            f"line {line('- a_b')}, variants.7: 'a_b' is not a name",
            f"line {line('from: loop-a')}, train.loop-b.from: a cycle: loop-a -> loop-b -> loop-a",
            f"line {line('from: nowhere')}, train.orphan.from: unknown variant 'nowhere'; expected base or one "
            "declared under train",
            f"line {line('method: kto')}, train.kto.method: input should be 'sft' or 'dpo', got 'kto'",
            f"line {line('dpo.loss_type')}, train.odd-loss.set.dpo.loss_type: input should be 'sigmoid', 'hinge', "
            "'ipo'",
            f"line {line('base:', line('train:'))}, train.base: base is the model as given and is not trained"):
        assert expected in found, f"{expected}\n--- not in ---\n{found}"
    # a name given twice under train is refused by the YAML reader itself, with both lines
    path.write_text(text.replace("  orphan:", "  sft:"))
    with pytest.raises(InputError, match=rf"line {line('orphan:')}: key 'sft' is given twice in one mapping "
                                         rf"\(first on line {line('sft:', line('train:'))}\)"):
        load_study(path)


# --------------------------------------------------------------------------- a study of declared variants

@pytest.fixture(scope="module")
def declared_study(tmp_path_factory):
    """sft, DPO for safety (harmless-base only, from base) and IPO from SFT, reported in that order."""
    root = tmp_path_factory.mktemp("declared")
    write_hh(root / "data", "harmless-base", "test", rows("harmful", 12))
    write_hh(root / "data", "helpful-base", "test", rows("helpful", 12))
    # training rows ask other questions than the evaluation set (numbered from 100)
    for subset, kind in (("harmless-base", "harmful"), ("helpful-base", "helpful")):
        write_hh(root / "data", subset, "train", [{k: v.replace("? (", "? (10") for k, v in r.items()}
                                                  for r in rows(kind, 20)])
    tiny_opt(root / "tiny-opt")
    tiny_deberta_rm(root / "tiny-rm", [r["chosen"] for r in rows("harmful", 12) + rows("helpful", 12)])
    fast = {"training.max_steps": 6, "training.learning_rate": 1e-2, "training.per_device_batch_size": 4,
            "training.gradient_accumulation_steps": 1, "training.precision": "fp32", "training.save_steps": 6,
            "training.logging_steps": 1, "training.max_length": 128, "data.split": "train", "data.limit": 12,
            "data.subsets": ["harmless-base", "helpful-base"],
            # held out from the training split (the shipped recipes take the test split's), so that the
            # rows each run and its starting model trained on must be left out
            "heldout.pairs": 12, "heldout.split": "train"}
    dpo = str(ROOT / "configs/recipes/dpo.yaml")
    config = {
        "name": "declared", "output_dir": str(root / "out"), "data": str(root / "data"),
        "models": [{"name": "tiny", "model": str(root / "tiny-opt")}],
        "evalset": {"seed": 1, "n_harmful": 6, "n_helpful": 6, "keywords": ["kill"], "format": "hh"},
        "variants": ["base", "sft", "dpo-safety", "ipo"],
        "train": {"sft": {"recipe": str(ROOT / "configs/recipes/sft.yaml"), "set": fast},
                  "dpo-safety": {"recipe": dpo, "method": "dpo", "from": "base",
                                 "set": {**fast, "training.learning_rate": 1e-3, "data.subsets": ["harmless-base"]}},
                  "ipo": {"recipe": dpo, "from": "sft",
                          "set": {**fast, "training.learning_rate": 1e-3, "dpo.loss_type": "ipo"}}},
        "generate": {"max_new_tokens": 8},
        "judge": {"model": str(root / "tiny-rm"), "max_length": 128},
        "report": {"title": "Declared variants", "figures": False},
    }
    run(config, root / "study.yaml", root / "cache")
    return root / "out"


@pytest.mark.slow  # a whole study
def test_a_study_of_declared_variants_runs_end_to_end_in_declared_order(declared_study):
    out = declared_study
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "sft", "dpo-safety", "ipo"]
    assert [(r["before"], r["after"]) for r in metrics["retention"]] == [
        ("base", "sft"), ("base", "dpo-safety"), ("base", "ipo"), ("sft", "ipo")]
    for path in ("answers/tiny/5_dpo-safety_harmful.json", "rated/tiny/6_ipo_helpful.json",
                 "models/tiny/ipo/heldout.json", "models/tiny/dpo-safety/adapter/adapter_config.json"):
        assert (out / path).is_file(), path
    ipo = yaml.safe_load((out / "models/tiny/ipo/recipe.yaml").read_text())
    assert ipo["dpo"]["loss_type"] == "ipo" and ipo["model"] == str(out / "models/tiny/sft/model")
    safety = metrics["training"]["dpo-safety"]
    assert safety["from"] == "base" and safety["subsets"] == ["harmless-base"]
    assert set(safety["heldout"]["dpo"]["by_subset"]) == {"harmless-base"}  # its own objective only
    assert safety["heldout"]["pairs"] == 8  # 20 rows, 12 trained on: the other 8
    assert safety["heldout"]["dpo"]["learned"]  # a preference this plain is learned in 6 steps
    report = (out / "report.md").read_text()
    table1, training = report.index("## Table 1"), report.index("## What training did")
    assert table1 < training < report.index("## Table 2")
    assert [line.split("|")[1].strip() for line in report[training:].splitlines()[6:9]] == ["SFT", "dpo-safety", "ipo"]
    assert "DPO (LoRA, ipo) from SFT, 6 steps" in report
