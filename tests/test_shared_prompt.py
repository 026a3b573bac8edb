"""A DPO pair's prompt run once for both replies gives TRL's two-row numbers: held-out log-probs,
and a training step's loss, logged metrics and gradients."""

import pytest
import torch

from alignscope.heldout import sequence_logps
from alignscope.shared_prompt import completion_logps, pack, takes_4d_mask

# prompts, chosen and rejected replies of different lengths (a one-token reply, a one-token prompt)
EXAMPLES = [
    {"prompt_ids": [5, 17, 9, 33, 2], "chosen_ids": [40, 41, 42], "rejected_ids": [50]},
    {"prompt_ids": [7, 8, 11, 12, 13, 14, 15, 16, 19], "chosen_ids": [60], "rejected_ids": [61, 62, 63, 64]},
    {"prompt_ids": [3], "chosen_ids": [70, 71], "rejected_ids": [72, 73, 74]},
]


def collated(examples=EXAMPLES):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=1)(examples)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tiny import tiny_gemma3, tiny_llama, tiny_opt

    root = tmp_path_factory.mktemp("shared-prompt")
    built = {name: AutoModelForCausalLM.from_pretrained(make(root / name)) for name, make in
             [("llama", tiny_llama), ("opt", tiny_opt), ("gemma3", lambda f: tiny_gemma3(f, sliding_window=64))]}
    lora = AutoModelForCausalLM.from_pretrained(root / "llama")
    lora = get_peft_model(lora, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    built["llama+lora"] = lora
    eager = AutoModelForCausalLM.from_pretrained(root / "llama", attn_implementation="eager")
    built["llama eager"] = eager
    return {name: m.eval() for name, m in built.items()}


@pytest.mark.parametrize("name", ["llama", "llama+lora", "llama eager", "opt", "gemma3"])
def test_held_out_sums_equal_the_two_row_path(models, name):
    model, batch = models[name], collated()
    assert takes_4d_mask(model)
    with torch.no_grad():
        shared, shared_counts = sequence_logps(model, batch)
        two_row, counts = sequence_logps(model, batch, share_prompts=False)
        per_token = completion_logps(model, batch)
    assert per_token is not None  # the shared path ran
    assert shared_counts.tolist() == counts.tolist() == [3, 1, 2, 1, 4, 3]
    torch.testing.assert_close(shared, two_row, atol=1e-5, rtol=0)
    assert (per_token != 0).sum().item() == 14  # one log-prob per reply token, at TRL's positions
    assert (two_row < -1).all()  # real log-probs, not zeros compared with zeros


def test_packed_rows_share_the_prompt_and_keep_the_replies_apart():
    """Pair 0 (prompt 5 tokens, chosen 3, rejected 1): prompt[:-1] | prompt[-1] chosen | prompt[-1] rejected,
    positions continuing the prompt's in both replies, the rejected reply blind to the chosen one."""
    packed = pack(collated())
    head = packed.first_reply
    assert head == 8  # the longest prompt (9 tokens) less its last token
    row = packed.input_ids[0, head - 4:head + 6].tolist()
    assert row == [5, 17, 9, 33, 2, 40, 41, 42, 2, 50]
    assert packed.position_ids[0, head - 4:head + 6].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5]
    assert packed.shift_labels[0, head:head + 6].tolist() == [40, 41, 42, -100, 50, -100]
    seen_by_rejected = packed.visible[0, 0, head + 5].nonzero().squeeze(1).tolist()
    assert seen_by_rejected == [head - 4, head - 3, head - 2, head - 1, head + 4, head + 5]
    # TRL's row 3 (pair 0's rejected) predicts its reply token at position 4 (the prompt's last)
    assert packed.source[0, head + 4].item() == 3 * (packed.out_shape[1]) + 4


def test_pairs_whose_rows_hold_different_prompts_go_the_two_row_way(models):
    """truncation keep_end cuts each row's prompt start by its own reply's length."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    batch = DataCollatorForPreference(pad_token_id=1, max_length=7, truncation_mode="keep_end")(EXAMPLES[:1])
    assert pack(batch) is None and completion_logps(models["llama"], batch) is None


def test_a_sliding_window_shorter_than_the_rows_goes_the_two_row_way(tmp_path):
    from transformers import AutoModelForCausalLM

    from tiny import tiny_gemma3

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3(tmp_path / "g", sliding_window=8))
    assert completion_logps(model, collated()) is None


# --------------------------------------------------------------------------- training steps

def dpo_trainer(tmp_path, model_dir, lora: bool, shared: bool = True):
    from alignscope.models import load_causal_lm, load_tokenizer
    from alignscope.train import (LoraSettings, TrainConfig, TrainingSettings, build_trainer, dpo_dataset,
                                  load_pairs)
    from alignscope.data import DataConfig

    data = DataConfig(source=str(tmp_path / "data"), subsets=["harmless-base"])
    cfg = TrainConfig(method="dpo", model=str(model_dir), output_dir=str(tmp_path / "out"), data=data,
                      lora=LoraSettings(r=4, dropout=0.1) if lora else None,
                      training=TrainingSettings(per_device_batch_size=3, precision="fp32", shared_prompt=shared))
    model, _ = load_causal_lm(str(model_dir), disable_dropout=True)
    ref = None if lora else load_causal_lm(str(model_dir), disable_dropout=True)[0]
    return build_trainer(cfg, model, load_tokenizer(str(model_dir)), dpo_dataset(load_pairs(data).pairs), ref,
                         checkpoints=tmp_path / "ckpt")


def varied_pairs(n):
    """HH rows whose prompts and replies differ in length, so a batch pads both."""
    rows = []
    for i in range(n):
        prompt = f"\n\nHuman: How do I bake bread{' again' * (4 * i)}? ({i})\n\nAssistant:"
        rows.append({"chosen": prompt + " Sure" + " indeed" * (2 * i) + ".", "rejected": prompt + " No" + "!" * (5 - i)})
    return rows


def step(trainer, batch, loss_of):
    """Loss, the logged metrics and the trainable weights' gradients of one training step's loss."""
    model = trainer.model
    model.train()
    model.zero_grad()
    trainer._metrics["train"].clear()
    loss = loss_of(trainer, model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    return loss.detach(), metrics, grads


@pytest.mark.parametrize("lora", [True, False], ids=["lora, adapter-off reference", "full, reference model"])
@pytest.mark.parametrize("variant", ["sigmoid", "ipo", "ld_alpha"])
def test_a_training_step_equals_trls_own(tmp_path, lora, variant):
    """Same batch, same weights: TRL's own two-row `compute_loss` (the base class's, so the fused forward
    is called as TRL calls it) against ours. The loss, every logged reward, log-prob, logit and accuracy,
    and the gradients agree."""
    from trl import DPOTrainer

    from conftest import write_hh
    from tiny import tiny_llama

    write_hh(tmp_path / "data", "harmless-base", "train", varied_pairs(3))
    trainer = dpo_trainer(tmp_path, tiny_llama(tmp_path / "llama"), lora)
    if variant == "ld_alpha":
        trainer.ld_alpha = 0.5
    else:
        trainer.loss_types = [variant]
    # policy and reference start equal (a fresh adapter is zero): move the policy off, so rewards are not 0
    torch.manual_seed(1)
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
        elif not lora:
            p.data.add_(torch.randn_like(p), alpha=0.05)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert type(trainer).__name__.startswith("SharedPrompt") and pack(batch) is not None
    assert len(set(batch["completion_mask"].sum(1).tolist())) > 2 and (batch["attention_mask"] == 0).any()

    ours = step(trainer, batch, lambda t, m, b: t.compute_loss(m, b))
    theirs = step(trainer, batch, lambda t, m, b: DPOTrainer.compute_loss(t, m, b))
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=0)
    assert ours[1].keys() == theirs[1].keys() and "rewards/margins" in ours[1]
    for key in theirs[1]:
        assert ours[1][key] == pytest.approx(theirs[1][key], abs=1e-5), key
    assert abs(theirs[1]["rewards/margins"]) > 1e-3  # the rewards differ from zero, so the comparison bites
    assert ours[2].keys() == theirs[2].keys() and len(ours[2]) > 0
    for name in theirs[2]:
        scale = theirs[2][name].abs().max()
        assert scale > 0, name
        assert (ours[2][name] - theirs[2][name]).abs().max() <= 1e-5 * scale, name


def test_precomputed_reference_log_probs_share_prompts_too(tmp_path):
    from trl import DPOTrainer

    from conftest import write_hh
    from tiny import tiny_llama

    write_hh(tmp_path / "data", "harmless-base", "train", varied_pairs(3))
    trainer = dpo_trainer(tmp_path, tiny_llama(tmp_path / "llama"), lora=False)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ours = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    theirs = DPOTrainer.compute_ref_log_probs(trainer, trainer.ref_model, batch)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_the_setting_off_builds_trls_own_trainer(tmp_path):
    from conftest import write_hh
    from tiny import tiny_llama

    write_hh(tmp_path / "data", "harmless-base", "train", varied_pairs(3))
    trainer = dpo_trainer(tmp_path, tiny_llama(tmp_path / "llama"), lora=True, shared=False)
    assert type(trainer).__name__ == "ResumableDPOTrainer"
