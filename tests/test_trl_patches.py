"""The patches to TRL and transformers internals: present, effective, and loud when TRL changes."""

import pytest

import trl
import trl.trainer.utils as trl_utils
from alignscope.trl_patches import TESTED_TRL, TRLChanged, check_trl, compact_lm_head


def test_installed_trl_is_a_tested_release_and_has_what_the_patches_need():
    assert ".".join(trl.__version__.split(".")[:2]) in TESTED_TRL
    check_trl()


def test_compact_lm_head_switches_compaction_on_for_the_cpu_and_restores_it():
    import torch

    cpu = torch.device("cpu")
    original = trl_utils._use_triton
    assert not original(cpu)  # TRL's own choice on a CPU: score every position
    with compact_lm_head(True):
        assert trl_utils._use_triton(cpu)
    assert trl_utils._use_triton is original
    with compact_lm_head(False):
        assert trl_utils._use_triton is original


def test_a_missing_internal_fails_loudly(monkeypatch):
    monkeypatch.delattr(trl_utils, "_use_triton")
    with pytest.raises(TRLChanged, match=r"_use_triton is gone"):
        check_trl()
    with pytest.raises(TRLChanged):
        with compact_lm_head(True):
            pass


def test_resumable_trainers_use_the_epoch_seeded_sampler(tmp_path):
    """The override is reached: a trainer built by alignscope samples with our sampler, and
    two of them (a run and its resumption) draw the same order for the same epoch."""
    from alignscope.data import DataConfig, load_pairs
    from alignscope.models import load_causal_lm, load_tokenizer
    from alignscope.train import TrainConfig, TrainingSettings, build_trainer, sft_dataset
    from alignscope.trl_patches import epoch_seeded_length_sampler
    from conftest import write_hh
    from tiny import hh_pairs, tiny_opt

    model_dir = tiny_opt(tmp_path / "opt")
    write_hh(tmp_path / "data", "harmless-base", "train", hh_pairs(12))
    data = DataConfig(source=str(tmp_path / "data"), subsets=["harmless-base"])
    cfg = TrainConfig(method="sft", model=str(model_dir), output_dir=str(tmp_path / "out"), data=data,
                      training=TrainingSettings(per_device_batch_size=2, precision="fp32", group_by_length=True))
    orders = []
    for _ in range(2):
        model, _ = load_causal_lm(str(model_dir))
        trainer = build_trainer(cfg, model, load_tokenizer(str(model_dir)), sft_dataset(load_pairs(data).pairs),
                                checkpoints=tmp_path / "ckpt")
        sampler = trainer._get_train_sampler(trainer.train_dataset)
        assert isinstance(sampler, epoch_seeded_length_sampler())
        sampler.set_epoch(1)
        orders.append(list(sampler))
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(12))


def test_every_dpo_loss_a_recipe_may_declare_is_one_trl_offers():
    """DPOSettings.loss_type lists TRL's losses, so that a typo fails at validation with its line: the list must
    be exactly the installed DPOTrainer's (its unknown-loss error names them all)."""
    import inspect
    import re

    from trl.trainer import dpo_trainer

    from alignscope.train import DPO_LOSSES

    named = re.search(r"Unknown loss type: \{loss_type\}\. Should be one of \[(.*?)\]", inspect.getsource(dpo_trainer),
                      re.S).group(1)
    assert sorted(DPO_LOSSES) == sorted(re.findall(r"'(\w+)'", named))
