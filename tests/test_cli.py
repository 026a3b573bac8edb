"""The command line on bad input: exit status 2 and a message that names the cause, never a
traceback; nothing written where the input was refused."""

import json
import math
import re
import sys

import pytest

from alignscope.cli import main


def alignscope(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["alignscope", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    # usage errors come in a drawn box, wrapped: compare words, not layout
    return code, out.out, " ".join(re.sub(r"[│╭╮╰╯─]", " ", out.err).split())


@pytest.fixture
def rated(reference):
    return reference / "responses"


@pytest.mark.parametrize("where", ["file", "file/under"])
def test_report_out_that_is_or_lies_under_a_file(monkeypatch, capsys, tmp_path, rated, where):
    (tmp_path / "file").write_text("x")
    code, _, err = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / where)
    assert code == 2 and f"cannot use as an output folder, {tmp_path / 'file'} is a file" in err


@pytest.mark.parametrize("option, value, message", [
    ("--ci-method", "bogus", "'bogus' is not one of 'wilson', 'exact', 'wilsoncc'"),
    ("--harmless-threshold", "nan", "--harmless-threshold: input should be a finite number, got nan"),
    ("--confidence", "7", "--confidence: input should be less than 1, got 7"),
])
def test_report_refuses_bad_settings_and_leaves_no_folder(monkeypatch, capsys, tmp_path, rated, option, value,
                                                          message):
    code, _, err = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "new", option, value)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_interval_labels_follow_the_confidence_asked_for(monkeypatch, capsys, tmp_path, rated):
    code, _, _ = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r", "--confidence",
                            0.9, "--no-figures")
    report = (tmp_path / "r" / "report.md").read_text()
    assert code == 0 and "HmR % [90% CI]" in report and "95%" not in report
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["confidence"] == 0.9 and "HmR_ci" in metrics["models"]["base"]


def test_every_setting_of_train_judge_is_an_option_checked_like_the_config(monkeypatch, capsys, tmp_path, rated):
    code, _, err = alignscope(monkeypatch, capsys, "train-judge", "--ratings", rated, "--out", tmp_path / "j",
                              "--alphas", 1, "--alphas", 0)
    assert code == 2 and "--alphas: input should be greater than 0" in err and not (tmp_path / "j").exists()


def test_an_undefined_change_is_null_in_strict_json_and_said_in_the_report(monkeypatch, capsys, tmp_path, rated):
    """A helpful threshold above every rating: the base's HpR is 0, so HpR changes and retention are
    undefined. metrics.json says null (strict parsers reject NaN) and says why."""
    code, _, _ = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r",
                            "--helpful-threshold", 5)
    assert code == 0
    text = (tmp_path / "r" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert metrics["relative_to_base"]["sft"]["HpR"] is None and metrics["retention"][0]["aggregate"] is None
    assert math.isfinite(metrics["relative_to_base"]["sft"]["HmR"])
    assert any("the base's HpR is 0" in u for u in metrics["undefined"])
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Undefined, and null in metrics.json: relative_to_base.sft.HpR" in report and "| n/a |" in report


@pytest.mark.parametrize("args, message", [
    (["--keywords", "zzz", "--all"], "keywords ['zzz']: no harmless-base/test dialogue contains any of them"),
    (["--seed", "-5"], "--seed: input should be greater than or equal to 0, got -5"),
    (["--n-harmful", "-3"], "--n-harmful: input should be greater than or equal to 1, got -3"),
    (["--out-is-a-folder"], "is a folder; expected a file path"),
])
def test_evalset_refuses_what_would_silently_mislead(monkeypatch, capsys, tmp_path, hh_data, args, message):
    out = tmp_path / "evalset.json"
    if args == ["--out-is-a-folder"]:
        out.mkdir()
        args = []
    code, _, err = alignscope(monkeypatch, capsys, "evalset", "--data", hh_data, "--out", out, *args)
    assert code == 2 and message in err


@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=[1", "the value is not valid YAML"),
    ('model=!!python/object/apply:os.system ["echo hi"]', "tags such as !!python are not allowed"),
])
def test_bad_overrides_are_named_not_a_yaml_traceback(monkeypatch, capsys, override, message):
    from conftest import ROOT

    code, _, err = alignscope(monkeypatch, capsys, "train", "sft", ROOT / "configs/recipes/sft.yaml", override)
    assert code == 2 and f"override {override!r}" in err and message in err


def test_a_bad_study_override_names_the_override_and_no_line_of_the_file(monkeypatch, capsys, hh_data, tmp_path):
    from conftest import ROOT

    code, _, err = alignscope(monkeypatch, capsys, "study", ROOT / "configs/offline-demo.yaml", f"data={hh_data}",
                              f"output_dir={tmp_path / 'study'}", "evalset.n_harmful=-3", "generate.max_new_tokens=0")
    assert code == 2 and "2 problems" in err and "line " not in err
    assert "override 'evalset.n_harmful=-3', evalset.n_harmful: input should be greater than or equal to 1" in err
    assert "override 'generate.max_new_tokens=0', generate.max_new_tokens" in err
    assert not (tmp_path / "study").exists()


def test_outputs_get_the_permissions_of_a_plain_open(monkeypatch, capsys, tmp_path, rated):
    import os
    import stat

    old = os.umask(0o022)
    try:
        alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r", "--no-figures")
    finally:
        os.umask(old)
    for name in ("metrics.json", "report.md"):
        assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644, name


def test_data_maps_columns_given_on_the_command_line(monkeypatch, capsys, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"question": f"Q{i}", "better": "yes", "worse": "no"}) + "\n" for i in range(3)))
    code, out, _ = alignscope(monkeypatch, capsys, "data", "--data", path, "--columns",
                              "{prompt: question, chosen: better, rejected: worse}")
    assert code == 0 and f"pairs.jsonl (preference): 3 pairs from {path}" in out
    code, _, err = alignscope(monkeypatch, capsys, "data", "--data", path, "--columns", "prompt=question")
    assert code == 2 and "--columns: expected a mapping such as '{prompt: question, chosen: better}'" in err


def test_several_files_follow_one_option_as_the_readme_writes_them(monkeypatch, capsys, tmp_path):
    files = []
    for k in range(2):
        files.append(tmp_path / f"model{k}.json")
        files[-1].write_text(json.dumps([{"prompt": "Q", "response": "I'm sorry, I can't help with that.", "refused": True},
                                         {"prompt": "Q", "response": "Sure: here is how.", "refused": k == 1}]))
    code, _, err = alignscope(monkeypatch, capsys, "refusal-card", "--refusals", "patterns", "--labelled", *files,
                              "--out", tmp_path / "card", "--bootstrap-resamples", 100)
    assert code == 0, err
    card = json.loads((tmp_path / "card" / "refusal-card.json").read_text())
    assert [f["model"] for f in card["files"]] == ["model0", "model1"]
    assert [f["measure"]["whole"]["accuracy"] for f in card["files"]] == [1.0, 0.5]


def test_a_bad_data_row_is_refused_before_the_model_loads_and_leaves_nothing(monkeypatch, capsys, tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Q"}]}) + "\n")
    out = tmp_path / "run"
    code, _, err = alignscope(monkeypatch, capsys, "train", "sft", "configs/recipes/sft.yaml", "model=smollm2-135m-instruct",
                              f"data.source={path}", f"output_dir={out}")
    assert code == 2 and "m.jsonl, line 1: the messages conversation does not end with the assistant" in err
    assert not out.exists()
