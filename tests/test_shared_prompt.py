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
