"""Input a hostile or careless user might give: names that would leave their folder, YAML that
would take the machine's memory, folders that are the user's, writes the system refuses, and
files that would silently drop a model. Each is refused with a clear error, or kept whole."""

import errno
import json
import os
import shutil
import stat
import time

import pytest
import yaml

from alignscope.answers import load_rated_dir
from alignscope.config import ConfigError, load_yaml
from alignscope.evalset import load_evalset
from alignscope.io import FOLDER_MARKER, InputError, atomic_folder, check_name
from alignscope.stages import Stage, StageLog
from alignscope.study import load_study
from test_cli import alignscope


@pytest.fixture
def rated(reference, tmp_path):
    folder = tmp_path / "rated"
    shutil.copytree(reference / "responses", folder)
    return folder


def test_a_name_is_checked_against_one_pattern_that_the_error_states():
    assert check_name("opt-350m.v2", "name") == "opt-350m.v2"
    for bad in ("x/../../escaped", "/etc/x", "..", "a|b", "<b>", "", "a_b", "-x"):
        with pytest.raises(InputError, match=r"name: .* is not a name; names match \[A-Za-z0-9\]"):
            check_name(bad, "name")


@pytest.mark.parametrize("args, message", [
    (["--name", "x/../../escaped"], "--name: 'x/../../escaped' is not a name; names match"),
    (["--name", "ok", "--index", "-1"], "index: -1 is not a whole number >= 0"),
])
def test_generate_refuses_a_name_or_index_that_would_write_elsewhere_before_any_work(monkeypatch, capsys, tmp_path,
                                                                                     args, message):
    out = tmp_path / "a" / "b" / "out"
    code, _, err = alignscope(monkeypatch, capsys, "generate", "--model", "nowhere", "--evalset",
                              tmp_path / "missing.json", "--out", out, *args)
    assert code == 2 and message in err
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize("command", [["report", "--rated", "{rated}"], ["generate", "--model", "m", "--evalset", "e"],
                                     ["score", "--answers", "{rated}"]])
def test_an_empty_out_is_refused_not_read_as_the_current_folder(monkeypatch, capsys, rated, command):
    args = [a.format(rated=rated) for a in command]
    code, _, err = alignscope(monkeypatch, capsys, *args, "--out", "")
    assert code == 2 and "is empty; name the file or folder to write" in err


def alias_bomb_under(where: str) -> str:
    """A study config whose value at `where` is nine levels of nine aliases: 9**9 values expanded."""
    parts = where.split(".")
    text = "name: x\noutput_dir: out\n" + "".join(f"{'  ' * d}{part}:\n" for d, part in enumerate(parts))
    indent = "  " * len(parts)
    text += f"{indent}- &a [{', '.join(['x'] * 9)}]\n"
    for i in range(8):
        text += f"{indent}- &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
    return text


@pytest.mark.parametrize("where", ["report.notes", "train.sft.set"])
def test_an_alias_bomb_in_a_study_config_is_refused_at_once(tmp_path, where):
    path = tmp_path / "study.yaml"
    path.write_text(alias_bomb_under(where))
    started = time.time()
    with pytest.raises(InputError, match="more than 100000 values once its aliases"):
        load_study(path)
    assert time.time() - started < 5


def test_a_repeated_key_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("report:\n  title: first\nname: x\nreport:\n  title: second\n")
    with pytest.raises(InputError, match=r"line 4: key 'report' is given twice in one mapping \(first on line 1\)"):
        load_yaml(path)


def test_a_bad_value_is_shown_as_a_bounded_excerpt(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": list(range(50_000)), "output_dir": "out", "models": []}))
    with pytest.raises(ConfigError) as e:
        load_study(path)
    line = next(p for p in e.value.problems if ", name:" in p)
    assert "[0, 1, 2, 3, ...]" in line and len(line) < 200


def test_a_study_whose_output_dir_is_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "taken").write_text("the user's")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "output_dir": str(tmp_path / "taken"), "data": str(tmp_path),
                                    "models": [{"name": "m", "model": "gemma-3-270m"}], "variants": ["base"]}))
    with pytest.raises(ConfigError, match=f"output_dir: {tmp_path / 'taken'}: cannot use as an output folder"):
        load_study(path)


def test_train_judge_replaces_only_a_folder_alignscope_marked_as_a_judge(monkeypatch, capsys, tmp_path, rated):
    out = tmp_path / "judge"
    (out / "notes").mkdir(parents=True)
    (out / "alignscope-judge.json").write_text('{"kind": "fake"}')
    (out / "notes" / "mine.txt").write_text("the user's")
    code, _, err = alignscope(monkeypatch, capsys, "train-judge", "--ratings", rated, "--out", out,
                              "--backbone", "unused")
    assert code == 2 and "would be replaced whole by a new distilled judge" in err
    assert (out / "notes" / "mine.txt").read_text() == "the user's" and (out / "alignscope-judge.json").is_file()


def test_a_marked_folder_is_replaced_and_one_changed_since_is_not(tmp_path):
    target = tmp_path / "judge"
    atomic_folder(target, lambda d: (d / "a").write_text("1"), "judge")
    atomic_folder(target, lambda d: (d / "a").write_text("2"), "judge")
    assert (target / "a").read_text() == "2"
    with pytest.raises(InputError, match="is not that of a figures"):
        atomic_folder(target, lambda d: (d / "a").write_text("3"), "figures")
    (target / "mine.txt").write_text("added by the user")
    with pytest.raises(InputError, match=r"holds files alignscope did not write there \(e.g. mine.txt\)"):
        atomic_folder(target, lambda d: (d / "a").write_text("3"), "judge")
    assert (target / "mine.txt").is_file() and (target / "a").read_text() == "2"


def test_a_symlinked_folder_is_replaced_where_it_points_and_stays_a_link(tmp_path):
    real = tmp_path / "real"
    atomic_folder(real, lambda d: (d / "a").write_text("old"), "judge")
    link = tmp_path / "link"
    link.symlink_to(real)
    atomic_folder(link, lambda d: (d / "a").write_text("new"), "judge")
    assert link.is_symlink() and (real / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # nothing left aside


def test_train_judge_on_two_models_is_refused_before_any_feature(tmp_path, rated):
    from alignscope.judges.train_judge import DistillConfig, train_judge

    for f in rated.glob("[34]_*"):
        f.unlink()
    with pytest.raises(InputError, match="2 models .*Give one model .* or at least three"):
        train_judge(DistillConfig(ratings=str(rated), output_dir=str(tmp_path / "j"), backbones=["unused"]))
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize("rename, listed", [
    ({"3_dpo_harmful.json": "3_dpo_harmful.JSON", "3_dpo_helpful.json": "3_dpo_helpfull.json"},
     "3_dpo_harmful.JSON, 3_dpo_helpfull.json"),
    ({"1_base_harmful.json": "-1_neg_harmful.json", "1_base_helpful.json": "-1_neg_helpful.json"},
     "-1_neg_harmful.json, -1_neg_helpful.json"),
    ({"3_dpo_harmful.json": "3_a|b_harmful.json", "3_dpo_helpful.json": "3_<b>_helpful.json"},
     "3_<b>_helpful.json, 3_a|b_harmful.json"),
])
def test_misnamed_answer_files_are_refused_or_listed_never_dropped(monkeypatch, capsys, tmp_path, rated, rename,
                                                                   listed):
    for old, new in rename.items():
        (rated / old).rename(rated / new)
    (rated / "1_base_generation.json").write_text("{}")  # what alignscope writes beside them is not misnamed
    (rated / "alignscope-judge.json").write_text("{}")
    code, _, err = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r")
    assert code == 2 and f"2 files look like answer files but are not named" in err and listed in err
    assert not (tmp_path / "r").exists()
    code, _, err = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r", "--no-strict",
                              "--no-figures")
    assert code == 0 and f"left out (misnamed, --no-strict): {listed}" in err
    assert "Left out as misnamed (--no-strict)" in (tmp_path / "r" / "report.md").read_text()


def test_a_huge_finite_rating_is_named_not_overflowed(monkeypatch, capsys, tmp_path, rated):
    rows = json.loads((rated / "2_sft_helpful.json").read_text())
    rows[7]["rating"] = 1e308
    (rated / "2_sft_helpful.json").write_text(json.dumps(rows))
    code, _, err = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r")
    assert code == 2 and "2_sft_helpful.json: item 7: 'rating' must be a finite number within +-1e+12, got 1e+308" in err


def test_a_report_on_a_full_disk_is_an_error_and_leaves_nothing_half_written(monkeypatch, capsys, tmp_path, rated):
    from matplotlib.figure import Figure

    save, saved = Figure.savefig, []

    def disk_full_at_the_third(self, path, **kw):  # what savefig meets when the disk fills up
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        saved.append(path)
        return save(self, path, **kw)

    monkeypatch.setattr(Figure, "savefig", disk_full_at_the_third)
    code, _, err = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r")
    assert code == 2 and "cannot write (No space left on device)" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == []  # no figures/, metrics.json, report.md


def test_a_read_only_file_system_is_named_before_any_work(monkeypatch, capsys, tmp_path, rated):
    real = os.statvfs

    class ReadOnly:  # the flags a read-only mount reports
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", ReadOnly)
    code, _, err = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r")
    assert code == 2 and f"{tmp_path / 'r'}: cannot write, {tmp_path} is on a read-only file system" in err


def test_a_folder_score_began_and_did_not_finish_is_refused_naming_what_is_missing(tmp_path, rated):
    (rated / "scoring.json").write_text(json.dumps({"complete": False, "files": sorted(
        p.name for p in rated.glob("*.json"))}))
    for name in ("3_dpo_harmful.json", "4_sftdpo_helpful.json"):
        (rated / name).unlink()
    with pytest.raises(InputError, match="began this folder and did not finish .*missing: 3_dpo_harmful.json, "
                                         "4_sftdpo_helpful.json"):
        load_rated_dir(rated)
    (rated / "scoring.json").unlink()  # the user's own rated files, no record: read as they are
    with pytest.raises(InputError, match="model 'dpo' has no harmful file"):
        load_rated_dir(rated)


@pytest.mark.parametrize("doc, message", [
    ({"harmful": [{"id": 1, "prompt": "a"}], "helpful": [{"id": 2, "prompt": "b"}],
      "harmfull": [{"id": 3, "prompt": "c"}]}, "unknown category 'harmfull'"),
    ({"harmful": [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "a"}], "helpful": []},
     r"harmful\[1\] repeats the prompt of harmful\[0\]"),
])
def test_an_evaluation_set_drops_no_prompt_and_repeats_none(tmp_path, doc, message):
    path = tmp_path / "evalset.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message):
        load_evalset(path)


def test_a_one_model_report_claims_no_comparison(monkeypatch, capsys, tmp_path, rated):
    for f in rated.glob("[234]_*"):
        f.unlink()
    code, _, _ = alignscope(monkeypatch, capsys, "report", "--rated", rated, "--out", tmp_path / "r", "--no-figures")
    report = (tmp_path / "r" / "report.md").read_text()
    assert code == 0 and "is supported" not in report and "One model only" in report


def test_a_rerun_keeps_the_seconds_of_the_run_that_made_each_output(tmp_path):
    out = tmp_path / "out.txt"
    stage = Stage("slow", [], {"x": 1}, [out], lambda: (time.sleep(0.3), out.write_text("x"))[1])
    first = StageLog(tmp_path / "stages.json", quiet=True)
    first.run(stage)
    again = StageLog(tmp_path / "stages.json", quiet=True)
    again.run(stage)
    assert first.timings[0]["seconds"] >= 0.3 and again.timings[0]["seconds"] == first.timings[0]["seconds"]
    assert again.timings[0]["status"].startswith("skipped")


def test_marked_folders_keep_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_folder(tmp_path / "f", lambda d: (d / "a").write_text("x"), "judge")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f" / FOLDER_MARKER).stat().st_mode) == 0o644


def test_judge_agreement_checks_its_out_before_rating_anything(monkeypatch, capsys, tmp_path, rated):
    (tmp_path / "taken").write_text("the user's")
    code, _, err = alignscope(monkeypatch, capsys, "judge-agreement", "--judge", tmp_path / "no-judge", "--rated",
                              rated, "--out", tmp_path / "taken")
    assert code == 2 and f"cannot use as an output folder, {tmp_path / 'taken'} is a file" in err
