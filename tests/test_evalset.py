import json
import random
import subprocess
import sys

import pytest

from alignscope.data import load_subset, paper_prompt
from alignscope.evalset import EvalsetConfig, build_evalset, load_evalset
from alignscope.io import InputError


def test_reproduces_the_reference_study_prompts(hh_data, reference, tmp_path):
    out = tmp_path / "evalset.json"
    subprocess.run([sys.executable, "-m", "alignscope", "evalset", "--data", str(hh_data), "--seed", "100",
                    "--format", "paper", "--out", str(out)], check=True, capture_output=True)
    doc = load_evalset(out)
    assert [x["prompt"] for x in doc["harmful"]] == json.loads((reference / "prompts/harmful_prompts.json").read_text())
    assert [x["prompt"] for x in doc["helpful"]] == json.loads((reference / "prompts/helpful_prompts.json").read_text())
    prov = doc["provenance"]
    assert prov["config"]["seed"] == 100 and prov["config"]["keywords"] == ["kill", "murder", "rape"]
    assert prov["keyword_matches"] == 192
    assert [len(f["sha256"]) for f in prov["files"]] == [64, 64]


def test_other_seeds_sizes_and_keywords_follow_the_same_procedure(hh_data):
    cfg = EvalsetConfig(data=str(hh_data), seed=7, n_harmful=12, n_helpful=9, keywords=["steal", "gun"],
                        format="paper")
    doc = build_evalset(cfg)
    # the procedure written out independently: one random state, two draws
    harmless, _ = load_subset(str(hh_data), "harmless-base", "test")
    helpful, _ = load_subset(str(hh_data), "helpful-base", "test")
    random.seed(7)
    picked = random.sample([p for p in harmless if "steal" in p.chosen_dialogue or "gun" in p.chosen_dialogue], 12)
    picked_help = random.sample(helpful, 9)
    assert [x["id"] for x in doc["harmful"]] == [p.id for p in picked]
    assert [x["prompt"] for x in doc["helpful"]] == [paper_prompt(p.chosen_dialogue) for p in picked_help]
    assert build_evalset(cfg) == doc  # deterministic
    assert build_evalset(EvalsetConfig(data=str(hh_data), seed=8, n_harmful=12, n_helpful=9,
                                       keywords=["steal", "gun"]))["harmful"] != doc["harmful"]


def test_hh_format_ends_with_the_assistant_turn_and_keywords_are_case_sensitive(hh_data):
    doc = build_evalset(EvalsetConfig(data=str(hh_data), format="hh", all=True))
    assert len(doc["harmful"]) == 192 and len(doc["helpful"]) == 2354
    assert all(x["prompt"].endswith("\n\nAssistant:") for x in doc["harmful"] + doc["helpful"])
    lower = build_evalset(EvalsetConfig(data=str(hh_data), all=True, keywords=["Kill"]))
    assert 0 < len(lower["harmful"]) < 192


def test_asking_for_more_prompts_than_qualify_is_refused(hh_data):
    with pytest.raises(InputError, match="only 192 rows qualify"):
        build_evalset(EvalsetConfig(data=str(hh_data), n_harmful=500))


def test_load_evalset_names_the_bad_entry(tmp_path):
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"harmful": [{"id": 1, "prompt": "x"}, {"id": 2}], "helpful": []}))
    with pytest.raises(InputError, match=r"harmful\[1\] must be an object with string 'prompt'"):
        load_evalset(path)
