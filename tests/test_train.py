"""Training on tiny config-built OPT models: each run takes seconds, offline."""

import json

import pytest
import torch

from alignscope.config import ConfigError
from alignscope.data import DataConfig
from alignscope.io import InputError, sha256_file
from alignscope.models import load_causal_lm, load_tokenizer
from alignscope.train import (LoraSettings, TrainConfig, TrainingInterrupted, TrainingSettings, build_trainer,
                              dpo_dataset, load_recipe, sft_dataset, train)
from alignscope.data import load_pairs
from conftest import write_hh
from tiny import hh_pairs, tiny_opt


def settings(**kw):
    base = dict(epochs=6, learning_rate=1e-2, per_device_batch_size=4, gradient_accumulation_steps=1,
                precision="fp32", logging_steps=1, save_steps=100, group_by_length=True)
    return TrainingSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = tiny_opt(root / "tiny-opt")
    write_hh(root / "data", "harmless-base", "train", hh_pairs(24))
    data = DataConfig(source=str(root / "data"), subsets=["harmless-base"])
    sft = train(TrainConfig(method="sft", model=str(model), output_dir=str(root / "sft"), data=data,
                            training=settings()))
    return {"root": root, "model": model, "data": data, "sft": sft}


def logged(history, key):
    return [x[key] for x in history if key in x]


def greedy(model_dir, prompt, n=20):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    x = tok(prompt, return_tensors="pt")
    out = model.generate(**x, max_new_tokens=n, do_sample=False)[0, x.input_ids.shape[1]:].tolist()
    return out, tok


def test_sft_lowers_the_loss_and_learns_to_stop(world):
    losses = logged(world["sft"].log_history, "loss")
    assert losses[-1] < losses[0] - 3
    ids, tok = greedy(world["sft"].model_dir, "Human: How do I bake bread? (0)\n\nAssistant:")
    assert tok.eos_token_id in ids, tok.decode(ids)  # it ends its reply ...
    assert tok.decode(ids[: ids.index(tok.eos_token_id)]) == " Sure, here is how."  # ... after the reply
    before, _ = greedy(world["model"], "Human: How do I bake bread? (0)\n\nAssistant:")
    assert tok.eos_token_id not in before


def test_eos_is_a_label_and_pad_is_not_eos(world):
    tok = load_tokenizer(str(world["model"]))
    assert tok.pad_token_id != tok.eos_token_id and tok("x").input_ids[0] == tok.eos_token_id  # OPT prepends </s>
    cfg = TrainConfig(method="sft", model=str(world["model"]), output_dir=str(world["root"] / "unused"),
                      data=world["data"], training=settings())
    pairs = load_pairs(world["data"]).pairs
    model, _ = load_causal_lm(str(world["model"]))
    trainer = build_trainer(cfg, model, tok, sft_dataset(pairs[:2]), checkpoints=world["root"] / "unused")
    row = trainer.train_dataset[0]
    labelled = [t for t, l in zip(row["input_ids"], row["labels"]) if l != -100]
    # exactly the reply and the EOS that ends it carry a loss; the prompt (and its leading </s>) do not
    assert tok.decode(labelled) == pairs[0].chosen + tok.eos_token
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert (batch["labels"] == tok.eos_token_id).sum() == 2

    # The study's setting, for contrast: pad == eos with a collator that masks pad ids drops every EOS label.
    from transformers import DataCollatorForLanguageModeling
    study_tok = load_tokenizer(str(world["model"]))
    study_tok.pad_token = study_tok.eos_token
    masked = DataCollatorForLanguageModeling(study_tok, mlm=False)([study_tok(pairs[0].prompt + pairs[0].chosen + "</s>")])
    assert (masked["labels"] == study_tok.eos_token_id).sum() == 0


def test_dpo_scores_exactly_the_replies(world):
    tok = load_tokenizer(str(world["model"]))
    cfg = TrainConfig(method="dpo", model=str(world["model"]), output_dir=str(world["root"] / "unused"),
                      data=world["data"], lora=LoraSettings(), training=settings())
    model, _ = load_causal_lm(str(world["model"]))
    pairs = load_pairs(world["data"]).pairs[:2]
    trainer = build_trainer(cfg, model, tok, dpo_dataset(pairs), checkpoints=world["root"] / "unused")
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    ids, mask = batch["input_ids"], batch["completion_mask"]
    chosen = tok.decode(ids[0][mask[0] == 1])
    rejected = tok.decode(ids[2][mask[2] == 1])
    assert chosen == pairs[0].chosen + tok.eos_token and rejected == pairs[0].rejected + tok.eos_token


def test_dpo_with_lora_raises_margin_and_accuracy_and_keeps_the_reference(world):
    from safetensors.torch import load_file

    out = world["root"] / "dpo"
    base_file = world["model"] / "model.safetensors"
    base_before = sha256_file(base_file)
    result = train(TrainConfig(method="dpo", model=str(world["model"]), output_dir=str(out), data=world["data"],
                               lora=LoraSettings(r=8, alpha=16), training=settings(epochs=3, learning_rate=5e-3)))
    margins, accuracies = logged(result.log_history, "rewards/margins"), logged(result.log_history, "rewards/accuracies")
    assert margins[-1] > margins[0] + 0.1
    assert sum(accuracies[-3:]) / 3 > 0.9 and accuracies[0] < 0.9
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # LoRA B starts at zero
    base = load_file(base_file)
    merged = load_file(out / "model" / "model.safetensors")
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    assert sha256_file(base_file) == base_before  # the base (the reference) is untouched by training


def test_sft_then_dpo_uses_the_sft_weights_as_reference(world):

    sft_dir = world["sft"].model_dir
    cfg = TrainConfig(method="dpo", model=str(sft_dir), output_dir=str(world["root"] / "unused2"),
                      data=world["data"], lora=LoraSettings(), training=settings())
    tok = load_tokenizer(str(sft_dir))
    policy, _ = load_causal_lm(str(sft_dir))
    pairs = load_pairs(world["data"]).pairs[:2]
    trainer = build_trainer(cfg, policy, tok, dpo_dataset(pairs), checkpoints=world["root"] / "unused2")
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    ref_chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)

    def logps(model_dir):
        model, _ = load_causal_lm(str(model_dir))
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        lp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        return (lp * batch["completion_mask"][:, 1:]).sum(-1)[:2]

    assert torch.allclose(ref_chosen, logps(sft_dir), atol=1e-4)
    assert not torch.allclose(ref_chosen, logps(world["model"]), atol=1e-2)


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_a_killed_run_resumes_to_the_same_loss(world, method):
    """torchtune-style: stop mid-run (after a checkpoint and some unsaved steps), resume,
    and end where a run never stopped ends."""
    root = world["root"] / f"resume-{method}"
    lora = LoraSettings() if method == "dpo" else None

    def cfg(name):
        return TrainConfig(method=method, model=str(world["model"]), output_dir=str(root / name),
                           data=world["data"], lora=lora, training=settings(epochs=3, save_steps=4,
                                                                            keep_checkpoints=True))

    straight = train(cfg("straight"))
    with pytest.raises(TrainingInterrupted):
        train(cfg("killed"), stop_after_step=10)
    ckpts = sorted(p.name for p in (root / "killed" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-4", "checkpoint-8"] and not (root / "killed" / "model").exists()
    # a checkpoint cut short (no completion marker) must not be trusted
    (root / "killed" / "checkpoints" / "checkpoint-12").mkdir()
    resumed = train(cfg("killed"))
    assert json.loads((root / "killed" / "done.json").read_text())["resumed_from"].endswith("checkpoint-8")
    a, b = logged(straight.log_history, "loss"), logged(resumed.log_history, "loss")
    assert len(a) == len(b) == 18
    assert abs(a[-1] - b[-1]) < 1e-5
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_the_last_step_saves_no_checkpoint_and_a_run_killed_after_it_resumes_to_the_same_weights(world):
    from safetensors.torch import load_file

    root = world["root"] / "last-step"

    def cfg(name):  # 18 steps, saving every 6: checkpoints at 6 and 12, none at 18 (the model is saved then)
        return TrainConfig(method="sft", model=str(world["model"]), output_dir=str(root / name), data=world["data"],
                           training=settings(epochs=3, save_steps=6, keep_checkpoints=True))

    def checkpoints(name):
        return sorted(p.name for p in (root / name / "checkpoints").glob("checkpoint-*"))

    straight = train(cfg("straight"))
    assert checkpoints("straight") == ["checkpoint-12", "checkpoint-6"]
    with pytest.raises(TrainingInterrupted):
        train(cfg("killed"), stop_after_step=18)  # after the last step, before the model is saved
    assert checkpoints("killed") == ["checkpoint-12", "checkpoint-6"] and not (root / "killed" / "model").exists()
    resumed = train(cfg("killed"))
    assert json.loads((root / "killed" / "done.json").read_text())["resumed_from"].endswith("checkpoint-12")
    a, b = logged(straight.log_history, "loss"), logged(resumed.log_history, "loss")
    assert len(a) == len(b) == 18 and max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    w, v = load_file(straight.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert max(float((w[k] - v[k]).abs().max()) for k in w) < 1e-5


def test_outputs_and_rerun_skips(world):
    out = world["sft"].output_dir
    assert {p.name for p in out.iterdir()} >= {"model", "recipe.yaml", "data_manifest.json", "train_log.json",
                                                "done.json"}
    assert not (out / "checkpoints").exists()  # removed once done.json is written (keep_checkpoints: false)
    manifest = json.loads((out / "data_manifest.json").read_text())
    assert manifest["rows_trained"] == 24 and manifest["rows"][0] == "harmless-base/train/1"
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.training.learning_rate == 1e-2 and recipe.method == "sft"
    again = train(recipe)
    assert again.skipped and again.log_history == world["sft"].log_history
    changed = TrainConfig(**{**recipe.__dict__, "training": settings(learning_rate=1e-3)})
    with pytest.raises(InputError, match="different recipe"):
        train(changed)


def test_bad_recipes_fail_before_training(world, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"method: sft\nmodel: {world['model']}\noutput_dir: {tmp_path / 'o'}\n"
                    "training:\n  learning_rat: 1e-5\n  epochs: two\nlora:\n  r: 8\n  target_modules: [q_proj]\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert "line 5, training.learning_rat: unknown key; did you mean 'learning_rate'?" in str(e.value)
    assert "line 6, training.epochs: input should be a valid number" in str(e.value)

    def run(**kw):
        base = dict(method="sft", model=str(world["model"]), output_dir=str(tmp_path / "o"), data=world["data"],
                    training=settings())
        train(TrainConfig(**{**base, **kw}))

    with pytest.raises(InputError, match=r"lora.target_modules: \['gate_proj'\] not found in OPTForCausalLM; "
                                         r"its linear layers are named: .*q_proj"):
        run(lora=LoraSettings(target_modules=["q_proj", "gate_proj"]))
    with pytest.raises(InputError, match="model 'no/such/model' not found"):
        run(model="no/such/model")
    with pytest.raises(InputError, match="not a folder, not a packaged model"):
        run(model=str(tmp_path / "missing"))
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_pickled_weights_are_refused_unless_allowed(world, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(world["model"])
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the old, pickled format

    with pytest.raises(InputError, match="only pickled weights .* --allow-pickle"):
        load_causal_lm(str(folder))
    model, _ = load_causal_lm(str(folder), allow_pickle=True)
    assert model.config.model_type == "opt"


def test_a_recipes_thread_count_lasts_only_while_it_trains(world, tmp_path):
    import torch

    before = torch.get_num_threads()
    if before == 1:
        pytest.skip("one thread already: a recipe's one thread would not show")
    train(TrainConfig(method="sft", model=str(world["model"]), output_dir=str(tmp_path / "one"), data=world["data"],
                      training=settings(epochs=1, num_threads=1)))
    assert torch.get_num_threads() == before
