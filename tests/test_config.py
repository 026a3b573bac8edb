import pytest

from alignscope.config import ConfigError, apply_overrides, load_config
from alignscope.data import DataConfig
from alignscope.io import InputError


def test_all_problems_are_reported_with_their_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source: hub\nsubsets: [harmless-base]\nsplitt: train\nlimit: many\nstrict: maybe\n")
    with pytest.raises(ConfigError) as e:
        load_config(DataConfig, path)
    text = str(e.value)
    assert "3 problems" in text
    assert "line 3, splitt: unknown key; did you mean 'split'?" in text
    assert "line 4, limit: input should be a valid integer" in text and "'many'" in text
    assert "line 5, strict: input should be a valid boolean" in text


def test_overrides_and_numbers_written_as_yaml_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("split: test\nlimit: 5\n")
    cfg = load_config(DataConfig, path, ["limit=7", "subsets=[helpful-base]"])
    assert cfg.limit == 7 and cfg.subsets == ["helpful-base"] and cfg.split == "test"
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2e-5"]) == {"a": {"b": 1, "c": "2e-5"}}
    with pytest.raises(InputError, match="expected key=value"):
        apply_overrides({}, ["limit"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("split: test\nsubsets: [a, b\nlimit: 3\n")
    with pytest.raises(InputError, match=r"c.yaml, line \d: not valid YAML"):
        load_config(DataConfig, path)


def test_a_bad_override_is_blamed_on_the_override_not_on_the_file_line_it_replaced(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("split: test\nlimit: 5\nstrict: true\n")
    with pytest.raises(ConfigError) as e:
        load_config(DataConfig, path, ["limit=many", "splitt=train", "strict=maybe", "strict=false"])
    text = str(e.value)
    assert "2 problems" in text  # the later strict=false is the one in effect
    assert "override 'limit=many', limit: input should be a valid integer" in text
    assert "override 'splitt=train', splitt: unknown key; did you mean 'split'?" in text
    assert "line 2" not in text
