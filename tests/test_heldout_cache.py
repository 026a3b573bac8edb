"""Held-out log-probabilities are computed once per (weights, tokens, scoring settings) and shared
between runs: tiny OPT runs that share a starting model, against runs with the cache off."""

import json

import numpy as np
import pytest

from alignscope.cache import ResultCache, disabled_cache
from alignscope.data import DataConfig
from alignscope.heldout import HeldoutSettings
from alignscope.train import LoraSettings, TrainConfig, TrainingSettings, train
from conftest import write_hh
from tiny import hh_pairs, tiny_opt


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("logps")
    write_hh(root / "data", "harmless-base", "train", hh_pairs(36))
    return {"root": root, "model": tiny_opt(root / "tiny-opt"), "cache": root / "logps",
            "data": DataConfig(source=str(root / "data"), subsets=["harmless-base"], limit=24)}


def run(world, name, method="dpo", model=None, cache=None, **training):
    """One run of 8 held-out pairs (the last 8 of 36: every run trains on the first 24); its heldout.json
    and the cache's hit counts. A fresh ResultCache on the shared folder counts this run's lookups only."""
    cache = cache or ResultCache(world["cache"])
    settings = {**dict(max_steps=2, learning_rate=1e-3, per_device_batch_size=4, gradient_accumulation_steps=1,
                       precision="fp32", logging_steps=1, save_steps=100), **training}
    train(TrainConfig(method=method, model=str(model or world["model"]), output_dir=str(world["root"] / name),
                      data=world["data"], lora=LoraSettings() if method == "dpo" else None,
                      training=TrainingSettings(**settings), heldout=HeldoutSettings(pairs=8)), logp_cache=cache)
    return json.loads((world["root"] / name / "heldout.json").read_text()), cache.stats


def computed(record):
    return {side: scored["computed"] for side, scored in record["scoring"].items()}


def test_runs_sharing_a_starting_model_compute_no_row_twice_and_match_the_uncached_numbers(world):
    sft, _ = run(world, "sft", method="sft", learning_rate=1e-2)
    assert computed(sft) == {"before": 8, "after": 8} and sft["pairs"] == 8
    # the base's log-probs of the chosen replies are found (SFT's "before": the same tokens, EOS included),
    # but each DPO row is a pair and its rejected reply is missing, so the row is scored
    dpo_a, hits = run(world, "dpo-a")
    assert computed(dpo_a) == {"policy": 8, "reference": 8} and hits["hits"] == 8
    # another DPO run from the base: its reference is the base again, every row found
    dpo_b, hits = run(world, "dpo-b", learning_rate=5e-3)
    assert computed(dpo_b) == {"policy": 8, "reference": 0} and hits["hits"] == 16
    uncached, _ = run(world, "dpo-b-uncached", cache=disabled_cache(), learning_rate=5e-3)
    assert computed(uncached) == {"policy": 8, "reference": 8}
    for side in ("policy", "reference"):
        assert np.array(dpo_b["values"][side]) == pytest.approx(np.array(uncached["values"][side]), abs=1e-6)
    assert dpo_b["values"]["reference"] == dpo_a["values"]["reference"]  # served from the cache as stored
    assert dpo_b["dpo"] == uncached["dpo"]  # the summaries are the same
    # SFT+DPO's reference is the saved SFT model: SFT's "after" was cached under that folder's fingerprint
    sftdpo, hits = run(world, "sftdpo", model=world["root"] / "sft" / "model")
    assert computed(sftdpo) == {"policy": 8, "reference": 8} and hits["hits"] == 8
    sft_after = json.loads((world["root"] / "sft" / "heldout.json").read_text())["values"]["logp_after"]
    order = {i: n for n, i in enumerate(sft["ids"])}
    chosen = [sftdpo["values"]["reference"][n][0] for n in range(8)]
    assert chosen == pytest.approx([sft_after[order[i]] for i in sftdpo["ids"]], abs=1e-5)


def test_other_weights_or_another_max_length_miss_the_cache(world):
    run(world, "warm")  # the base's reference scores, cached
    assert computed(run(world, "again")[0])["reference"] == 0
    assert computed(run(world, "max-length", max_length=256)[0])["reference"] == 8
    other = tiny_opt(world["root"] / "other-opt", seed=1)
    assert computed(run(world, "other-model", model=other)[0])["reference"] == 8
