"""SFT and DPO on HH-RLHF through TRL, from one recipe.

One flow, top to bottom: resolve the recipe -> load the data -> load the model
(and its reference) -> build TRL's trainer -> train, resuming from the last
complete checkpoint -> save the model (LoRA merged, adapter kept), the resolved
recipe, the data manifest and the training log, each written atomically.

Correctness choices worth knowing:
- Labels come from TRL's completion masks, never from comparing tokens with the
  pad id, and the pad token is not EOS where the tokenizer has another one: with
  pad == eos and a pad-masking collator (the study's setting) the EOS that ends a
  reply is never a label, and the model never learns to stop.
- SFT trains on the replies (`completion_only_loss`); DPO scores exactly the
  chosen and rejected replies (TRL's completion mask on a prompt/chosen/rejected
  dataset).
- DPO switches off every dropout the model's config declares, not only the
  nn.Dropout modules TRL reaches: OPT's dropout is functional, and with it on the
  policy and the reference are scored under different random masks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from alignscope.cache import ResultCache
from alignscope.config import load_config, validated
from alignscope.data import DataConfig, LoadedData, Pair, data_fingerprint, load_pairs, text_of
from alignscope.heldout import (HeldoutSettings, dataloader_logps, describe, dpo_summary, heldout_pairs,
                                inherited_openings, opening_key, scored_sequences, scoring_settings, sft_summary)
from alignscope.io import (InputError, atomic_folder, atomic_write_json, atomic_write_text, read_json,
                           replace_folder, sha256_json, sha256_text)
from alignscope.models import (cache_dir, chat_template, choose_precision, load_causal_lm, load_tokenizer,
                               model_fingerprint, resolve_model)
from alignscope.provenance import package_versions
from alignscope.shared_prompt import shared_prompt_trainer
from alignscope.trl_patches import compact_lm_head, resumable

COMPLETE_MARKER = "alignscope-complete"
DONE_FILE = "done.json"
# How often to save and log, how many threads, whether DPO shares each prompt: none of them changes the
# trained weights beyond float rounding (a thread count changes the order of sums too).
CADENCE = ("save_steps", "save_total_limit", "keep_checkpoints", "logging_steps", "num_threads", "report_to",
           "shared_prompt")


@dataclass
class LoraSettings:
    r: Annotated[int, Field(ge=1)] = 8
    alpha: int = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TrainingSettings:
    """How any of our TRL trainers runs (SFT, DPO, and the reward models)."""

    epochs: Annotated[float, Field(gt=0)] = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    learning_rate: Annotated[float, Field(gt=0)] = 2e-5
    per_device_batch_size: Annotated[int, Field(ge=1)] = 2
    gradient_accumulation_steps: Annotated[int, Field(ge=1)] = 4
    max_length: Annotated[int, Field(ge=8)] = 512
    lr_scheduler: str = "linear"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Share of the steps spent warming the learning rate up from 0."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    seed: Annotated[int, Field(ge=0)] = 42
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on a GPU that has it (fp16 on older ones), fp32 on a CPU; set bf16 to try it there."""
    completion_only_loss: bool = True
    """SFT: loss on the replies only; false trains on the whole dialogue, as the reference study did."""
    group_by_length: bool = True
    """Batch sequences of similar length together: less padding, same data."""
    padding_free: bool = False
    """SFT: flatten each batch into one unpadded sequence (block-diagonal attention)."""
    compact_lm_head: bool = True
    """Project through the LM head only the positions that carry a label (TRL does this on CUDA; we do it on CPU too)."""
    shared_prompt: bool = True
    """DPO: run each pair's prompt through the model once for both replies (policy and reference), where the
    model's attention takes a custom mask and dropout is off; TRL's loss on the same numbers to float rounding."""
    gradient_checkpointing: bool = False
    save_steps: Annotated[int, Field(ge=1)] = 200
    save_total_limit: Annotated[int, Field(ge=1)] = 2
    keep_checkpoints: bool = False
    """Keep checkpoints/ once the run is done (they hold optimizer states: ~12 bytes a parameter each)."""
    logging_steps: Annotated[int, Field(ge=1)] = 10
    report_to: str | list[str] = "none"
    """Where TRL sends the training logs: none, tensorboard (under output_dir/logs), wandb, trackio, or a list."""
    num_threads: Annotated[int, Field(ge=1)] | None = None
    """CPU threads for torch; default: all cores."""


# The losses TRL's DPOTrainer offers (tests/test_trl_patches.py checks them against the installed TRL)
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class DPOSettings:
    beta: Annotated[float, Field(gt=0)] = 0.1
    """The strength of the pull toward the reference (IPO: its regularization parameter)."""
    loss_type: Literal[DPO_LOSSES] = "sigmoid"
    """Any of TRL's DPOTrainer losses: sigmoid (DPO), ipo, hinge, robust, ..."""
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    """The assumed share of flipped labels (robust, exo_pair and conservative DPO use it)."""
    reference: str | None = None
    """Reference model; default: the policy's own starting weights (with LoRA, the adapter switched off)."""
    reference_revision: str | None = None
    """Hub revision of `reference` when it is another hub model (the policy's `revision` is its own)."""
    precompute_ref_log_probs: bool = False
    disable_dropout: bool = True
    """Switch off every dropout the model's config declares, for policy and reference alike."""


@dataclass
class TrainConfig:
    """A training recipe: one YAML file, any field overridable as key=value."""

    method: Literal["sft", "dpo"]
    model: str
    """Base model: hub id (facebook/opt-350m), local folder, or packaged name (gemma-3-270m, smollm2-135m-instruct)."""
    output_dir: str
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings | None = None
    training: TrainingSettings = field(default_factory=TrainingSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    heldout: HeldoutSettings = field(default_factory=HeldoutSettings)
    """Pairs never trained on, scored before and after: did the run learn its objective?"""
    allow_pickle: bool = False
    """Allow loading pickled (.bin) weights, which can run arbitrary code from the file."""
    revision: str | None = None
    """Hub revision of the base model: a branch, tag, refs/pr/N or commit (the OPT repos keep safetensors only
    in their conversion branches)."""


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    log_history: list[dict]
    skipped: bool = False


def load_recipe(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


def recipe_hash(cfg: TrainConfig) -> str:
    """What decides the trained weights, by content: the starting model's fingerprint, the
    data files' hashes, the settings. Not where any of it lies (a moved study folder is
    still finished), nor logging and saving cadence. Validated first, so `epochs: 2` and
    `epochs: 2.0` hash alike."""
    d = asdict(validated(cfg))
    for key in CADENCE:
        d["training"].pop(key)
    d.pop("output_dir")
    d["model"] = model_fingerprint(resolve_model(cfg.model, cfg.allow_pickle), cfg.revision)
    # the reference's fingerprint names the commit its revision resolves to
    d["dpo"].pop("reference_revision")
    if cfg.dpo.reference:
        d["dpo"]["reference"] = model_fingerprint(resolve_model(cfg.dpo.reference, cfg.allow_pickle),
                                                  reference_revision(cfg))
    d["data"] = data_fingerprint(cfg.data)
    return sha256_json(d)


# --------------------------------------------------------------------------- data

def sft_dataset(pairs: list[Pair]):
    """prompt / completion rows: the chosen reply is the completion (TRL appends EOS to text; a chat
    template ends a conversational reply with its own end-of-turn token)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [p.prompt for p in pairs], "completion": [p.chosen for p in pairs],
                              "id": [p.id for p in pairs]})


def dpo_dataset(pairs: list[Pair]):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [p.prompt for p in pairs], "chosen": [p.chosen for p in pairs],
                              "rejected": [p.rejected for p in pairs], "id": [p.id for p in pairs]})


# --------------------------------------------------------------------------- models

def check_lora_targets(model, lora: LoraSettings) -> None:
    import torch

    linear_names = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                           if isinstance(mod, torch.nn.Linear)})
    missing = [t for t in lora.target_modules if t not in linear_names]
    if missing:
        raise InputError(
            f"lora.target_modules: {missing} not found in {type(model).__name__}; "
            f"its linear layers are named: {', '.join(linear_names)}")


def lora_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


def disables_dropout(cfg: TrainConfig) -> bool:
    return cfg.method == "dpo" and cfg.dpo.disable_dropout


# --------------------------------------------------------------------------- checkpoints

def _checkpoint_marker_callback():
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        """Mark a checkpoint complete once Trainer has written all of it; resume trusts only marked ones."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    atomic_write_text(ckpt / COMPLETE_MARKER, f"{state.global_step}\n")

    return MarkComplete()


def _no_checkpoint_at_the_last_step():
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        """Trainer saves a checkpoint (optimizer state too) at the last step; save_outputs writes the model
        right after, and a run killed in between resumes from the checkpoint before and saves again."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False

    return NoFinalCheckpoint()


def last_complete_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    ckpts = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (ckpt / COMPLETE_MARKER).is_file():
            return ckpt
    return None


# --------------------------------------------------------------------------- the flow

def common_trl_args(t: TrainingSettings, precision: str, checkpoints: Path) -> dict:
    """The TrainingArguments every trainer of ours shares (SFT, DPO, the reward models)."""
    import torch

    return dict(
        output_dir=str(checkpoints), num_train_epochs=t.epochs, max_steps=t.max_steps,
        learning_rate=t.learning_rate, per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, max_length=t.max_length,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        seed=t.seed, data_seed=t.seed, bf16=precision == "bf16", fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=t.gradient_checkpointing,
        save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps, report_to=t.report_to, dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        disable_tqdm=os.environ.get("ALIGNSCOPE_QUIET") == "1",
    )


def trl_args(cfg: TrainConfig, precision: str, checkpoints: Path):
    from trl import DPOConfig, SFTConfig

    common = dict(common_trl_args(cfg.training, precision, checkpoints), save_strategy="steps")
    if cfg.method == "sft":
        return SFTConfig(**common, completion_only_loss=cfg.training.completion_only_loss,
                         padding_free=cfg.training.padding_free)
    return DPOConfig(**common, beta=cfg.dpo.beta, loss_type=[cfg.dpo.loss_type], label_smoothing=cfg.dpo.label_smoothing,
                     precompute_ref_log_probs=cfg.dpo.precompute_ref_log_probs,
                     disable_dropout=cfg.dpo.disable_dropout)


@contextlib.contextmanager
def training_logs(t: TrainingSettings, out: Path):
    """TensorBoard logs under output_dir/logs, where they outlive the checkpoints folder."""
    wanted = [t.report_to] if isinstance(t.report_to, str) else list(t.report_to)
    if "tensorboard" not in wanted and "all" not in wanted:
        yield
        return
    saved = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "logs")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = saved


def build_trainer(cfg: TrainConfig, model, tokenizer, dataset, ref_model=None, precision: str = "fp32",
                  checkpoints: Path | None = None, heldout=None):
    from trl import DPOTrainer, SFTTrainer

    args = trl_args(cfg, precision, checkpoints or Path(cfg.output_dir) / "checkpoints")
    # the held-out pairs go in as TRL's eval set, so that TRL tokenizes them as it does the training rows
    kwargs = dict(model=model, args=args, processing_class=tokenizer, train_dataset=dataset, eval_dataset=heldout,
                  peft_config=lora_config(cfg.lora) if cfg.lora else None,
                  callbacks=[_checkpoint_marker_callback(), _no_checkpoint_at_the_last_step()])
    if cfg.method == "sft":
        # the length sampler measures SFT rows by their input_ids
        return resumable(SFTTrainer)(**kwargs)
    if cfg.training.group_by_length:
        # preference rows have no input_ids: give the sampler a length (characters of the longer side)
        kwargs["train_dataset"] = dataset.map(
            lambda r: {"length": len(text_of(r["prompt"])) + max(len(text_of(r["chosen"])),
                                                                 len(text_of(r["rejected"])))})
    trainer_class = resumable(DPOTrainer)
    # with dropout on, the two replies would share one dropout draw over the prompt: another estimator
    if cfg.training.shared_prompt and cfg.dpo.disable_dropout:
        trainer_class = shared_prompt_trainer(trainer_class)
    return trainer_class(ref_model=ref_model, **kwargs)


@dataclass
class Setup:
    """What a run trains with, all loaded (and so checked) before any training starts."""

    model: object
    resolved: str
    tokenizer: object
    loaded: LoadedData
    ref_model: object | None
    precision: str
    dropout_disabled: bool
    heldout: list[Pair]
    heldout_info: dict
    trained_openings: set[str]


def reference_revision(cfg: TrainConfig) -> str | None:
    """The hub revision of the DPO reference: its own when it is another model, else the policy's."""
    return cfg.dpo.reference_revision if cfg.dpo.reference else cfg.revision


def setup(cfg: TrainConfig) -> Setup:
    """Everything that can be wrong with the recipe fails here, before any training."""
    # the data first: a bad row is reported in seconds, not after the model has loaded
    loaded = load_pairs(cfg.data)
    if not loaded.pairs:
        raise InputError("data: the recipe selects no training pairs")
    if cfg.method == "dpo" and loaded.pairs[0].rejected is None:
        raise InputError(f"data: DPO needs chosen and rejected replies; {cfg.data.source} is in "
                         f"{loaded.summary['files'][0].get('format')} format (SFT data)")
    no_dropout = disables_dropout(cfg)
    model, resolved = load_causal_lm(cfg.model, cfg.allow_pickle, cfg.revision, disable_dropout=no_dropout)
    if cfg.lora:
        check_lora_targets(model, cfg.lora)
    tokenizer = load_tokenizer(resolved, cfg.revision)
    if loaded.pairs[0].conversational:
        chat_template(tokenizer, cfg.model)
    ref_model = None
    if cfg.method == "dpo" and (cfg.dpo.reference or not cfg.lora):
        # Without LoRA, TRL would reload the reference from config._name_or_path; load it ourselves.
        ref_model, _ = load_causal_lm(cfg.dpo.reference or cfg.model, cfg.allow_pickle, reference_revision(cfg),
                                      disable_dropout=no_dropout)
    trained = {opening_key(p.prompt) for p in loaded.pairs} | inherited_openings(cfg.model)
    heldout, heldout_info = heldout_pairs(cfg.data, cfg.heldout, trained)
    return Setup(model, resolved, tokenizer, loaded, ref_model, choose_precision(cfg.training.precision), no_dropout,
                 heldout, heldout_info, trained)


def finished_run(out: Path, digest: str) -> TrainResult | None:
    """A finished run of this very recipe in `out`; a finished run of another is refused."""
    if not (out / DONE_FILE).is_file():
        return None
    if read_json(out / DONE_FILE).get("recipe_hash") == digest:
        return TrainResult(out, out / "model", read_json(out / "train_log.json"), skipped=True)
    raise InputError(f"{out} holds a finished run of a different recipe; choose another output_dir "
                     "or delete that folder")


def train(cfg: TrainConfig, *, stop_after_step: int | None = None, logp_cache: ResultCache | None = None) -> TrainResult:
    """Run a recipe to completion, or resume it. `stop_after_step` simulates a kill (tests). Held-out
    log-probabilities are shared through `logp_cache` (default: the one under the cache folder).
    torch's thread count is the recipe's while it trains, and the caller's again after."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _train(validated(cfg, "recipe"), stop_after_step, logp_cache)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, stop_after_step: int | None, logp_cache: ResultCache | None) -> TrainResult:
    import torch

    out = Path(cfg.output_dir)
    digest = recipe_hash(cfg)
    if finished := finished_run(out, digest):
        return finished
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    started = time.time()
    logp_cache = logp_cache or ResultCache(cache_dir() / "logps")
    s = setup(cfg)  # refuses a bad recipe or bad data before anything is written
    out.mkdir(parents=True, exist_ok=True)
    as_dataset = sft_dataset if cfg.method == "sft" else dpo_dataset
    checkpoints = out / "checkpoints"
    with compact_lm_head(cfg.training.compact_lm_head), training_logs(cfg.training, out):
        # held-out pairs shortest first: less padding in each eval batch (the record keeps the ids)
        heldout_set = as_dataset(sorted(s.heldout, key=lambda p: len(text_of(p.prompt)) + len(text_of(p.chosen))
                                        + len(text_of(p.rejected)))) if s.heldout else None
        trainer = build_trainer(cfg, s.model, s.tokenizer, as_dataset(s.loaded.pairs), s.ref_model, s.precision,
                                checkpoints, heldout_set)
        if trainer.accelerator.is_main_process:
            write_run_inputs(cfg, s.loaded, trainer, out, s.trained_openings)
        if stop_after_step is not None:
            trainer.add_callback(_stop_at(stop_after_step))
        resume = last_complete_checkpoint(checkpoints)
        start = model_fingerprint(s.resolved, cfg.revision)
        # SFT's "before": the starting weights, which a resumed run still holds until train() loads the checkpoint
        before = heldout_logps(trainer, start, logp_cache) if s.heldout and cfg.method == "sft" else None
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        model_dir = save_outputs(trainer, s.tokenizer, cfg, out)
        # scored after the save, whose fingerprint names the trained weights; a kill before done.json
        # resumes from the last checkpoint and saves again
        heldout = (heldout_record(cfg, trainer, s, before, start, out, logp_cache) if s.heldout
                   else {**s.heldout_info, "ids": None})

    if trainer.accelerator.is_main_process:
        atomic_write_json(out / "heldout.json", heldout)
        heldout = {k: v for k, v in heldout.items() if k not in ("ids", "values", "scoring")}
        trainer.state.log_history.append({"step": trainer.state.global_step, "heldout": heldout})
        atomic_write_json(out / "train_log.json", trainer.state.log_history)
        atomic_write_json(out / DONE_FILE, {
            "recipe_hash": digest, "model_dir": str(model_dir), "precision": s.precision,
            "resolved_model": s.resolved, "revision": cfg.revision,
            "start_fingerprint": start, "seed": cfg.training.seed,
            "dropout_disabled": s.dropout_disabled, "global_step": trainer.state.global_step,
            "resumed_from": str(resume) if resume else None, "seconds": round(time.time() - started, 1),
            "processes": trainer.accelerator.num_processes, "heldout": heldout, "versions": package_versions()})
        if not cfg.training.keep_checkpoints:
            shutil.rmtree(checkpoints, ignore_errors=True)  # done.json makes them unnecessary
    return TrainResult(out, model_dir, trainer.state.log_history)


def heldout_logps(trainer, weights: str, cache: ResultCache, model=None) -> tuple[list, list, dict]:
    """Every held-out sequence's (summed log-prob, labelled tokens) in dataset order, for the weights
    fingerprinted `weights`, and how many rows were computed. A row is looked up in `cache` by those
    weights, its tokens and what else decides the numbers (`scoring_settings`); the rows missing are
    computed in dataset order, batched as before (Trainer's own eval loader groups them by length).
    A cached value may come from another batch, so it can differ from a fresh one by float rounding."""
    from accelerate.utils import broadcast_object_list
    from torch.utils.data import DataLoader

    model = model or trainer.model
    rows, state = trainer.eval_dataset, trainer.accelerator
    found = None
    if state.is_main_process:
        settings = scoring_settings(trainer, model)
        keys = [[ResultCache.key("logps", weights, settings, ids, labels)
                 for ids, labels in scored_sequences(trainer.data_collator, row)] for row in rows]
        found = [[cache.get(k) for k in row_keys] for row_keys in keys]
    if state.num_processes > 1:
        found = broadcast_object_list([found])[0]  # every process must score the same rows
    missing = [i for i, values in enumerate(found) if None in values]
    started = time.time()
    if missing:
        loader = DataLoader(rows.select(missing), batch_size=trainer.args.per_device_eval_batch_size,
                            collate_fn=trainer.data_collator, shuffle=False)
        sums, counts = dataloader_logps(trainer, model, state.prepare(loader))
        for i, row_sums, row_counts in zip(missing, sums, counts):
            # a DPO row is a pair [chosen, rejected], an SFT row one sequence
            found[i] = ([list(v) for v in zip(row_sums, row_counts)] if isinstance(row_sums, list)
                        else [[row_sums, row_counts]])
            if state.is_main_process:
                for key, value in zip(keys[i], found[i]):
                    cache.put(key, value)

    def column(j: int) -> list:
        return [[v[j] for v in values] if len(values) > 1 else values[0][j] for values in found]

    return column(0), column(1), {"rows": len(found), "computed": len(missing),
                                  "seconds": round(time.time() - started, 2)}


def trained_weights(trainer, start: str, out: Path) -> str:
    """The fingerprint of the weights the trained policy is scored with. A full fine-tune: the saved
    model/ (the same tensors). LoRA: the base with the saved adapter on, a key of its own, because the
    merged model/ computes the same log-probs only to float rounding."""
    from peft import PeftModel

    if isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel):
        return f"lora:{start}+{model_fingerprint(str(out / 'adapter'))}"
    return model_fingerprint(str(out / "model"))


def heldout_record(cfg: TrainConfig, trainer, s: Setup, before, start: str, out: Path, cache: ResultCache) -> dict:
    """The held-out evidence of learning: for done.json and the log (summaries), heldout.json (every pair,
    and how many rows each scoring computed rather than found in `cache`)."""
    after, tokens, scoring = heldout_logps(trainer, trained_weights(trainer, start, out), cache)
    level, record = cfg.heldout.confidence, dict(s.heldout_info)
    # TRL drops a pair whose prompt alone fills max_length: the record keeps the pairs scored
    kept = list(trainer.eval_dataset["id"])
    scored = set(kept)
    record.update(pairs=len(kept), ids=kept, dropped_by_trainer=[i for i in record["ids"] if i not in scored])
    subset = {p.id: p.subset for p in s.heldout}
    if cfg.method == "sft":
        record["sft"] = sft_summary(before[0], after, tokens, level, cfg.training.seed)
        record["values"] = {"logp_before": before[0], "logp_after": after, "tokens": tokens}
        record["scoring"] = {"before": before[2], "after": scoring}
    else:
        # the reference's weights: another model's, else the starting model's (LoRA: the adapter switched off)
        reference_weights = (model_fingerprint(resolve_model(cfg.dpo.reference, cfg.allow_pickle),
                                               reference_revision(cfg)) if cfg.dpo.reference else start)
        if trainer.ref_model is not None:
            reference, _, scored = heldout_logps(trainer, reference_weights, cache, trainer.ref_model)
        else:
            with trainer.accelerator.unwrap_model(trainer.model).disable_adapter():
                reference, _, scored = heldout_logps(trainer, reference_weights, cache)
        record["dpo"] = dpo_summary(after, reference, [subset[i] for i in kept], level)
        record["values"] = {"policy": after, "reference": reference}
        record["scoring"] = {"policy": scoring, "reference": scored}
    print(f"{cfg.output_dir}: {describe(record)}", flush=True)
    return record


def write_run_inputs(cfg: TrainConfig, loaded: LoadedData, trainer, out: Path, openings: set[str]) -> None:
    """recipe.yaml and data_manifest.json. TRL drops rows whose prompt alone fills max_length:
    the manifest records the rows actually trained on."""
    trained = list(trainer.train_dataset["id"])
    kept = set(trained)
    template = {}
    if loaded.pairs and loaded.pairs[0].conversational:
        template = {"chat_template_sha256": sha256_text(trainer.processing_class.chat_template)}
    atomic_write_text(out / "recipe.yaml", _yaml(asdict(cfg)))
    atomic_write_json(out / "data_manifest.json", {
        **loaded.summary, **template, "rows_trained": len(trained), "dropped_by_trainer": [p.id for p in loaded.pairs
                                                                              if p.id not in kept],
        "rows": trained, "rows_sha256": sha256_json(trained),
        # what held-out pairs of a model trained from this one must avoid (its ancestors' rows included)
        "trained_openings": sorted(openings)})


class TrainingInterrupted(RuntimeError):
    def __init__(self, step: int):
        super().__init__(f"training stopped after step {step}; run again to resume")
        self.step = step


def _stop_at(step: int):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        """Dies like a killed process would: mid-run, after whatever was saved so far."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise TrainingInterrupted(state.global_step)

    return Crash()


def save_outputs(trainer, tokenizer, cfg: TrainConfig, out: Path) -> Path:
    """model/ (LoRA merged, ready for evaluation) and adapter/ (LoRA only), each renamed into place whole.

    Saving goes through `trainer.save_model`, which gathers sharded weights under FSDP
    and DeepSpeed; every rank calls it, only the main process renames and merges."""
    from peft import PeftModel

    state = trainer.accelerator
    is_lora = isinstance(state.unwrap_model(trainer.model), PeftModel)
    target = out / ("adapter" if is_lora else "model")
    tmp = out / f".{target.name}.tmp"
    if state.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    state.wait_for_everyone()
    trainer.save_model(str(tmp))
    if state.is_main_process:
        tokenizer.save_pretrained(tmp)
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; recipe.yaml records the arguments
        replace_folder(tmp, target)
        if is_lora:
            # Merge on a fresh copy of the base, on the CPU, in fp32: the evaluation model
            # is then the same whatever precision or sharding the training ran under.
            base, _ = load_causal_lm(cfg.model, cfg.allow_pickle, cfg.revision)
            merged = PeftModel.from_pretrained(base, target).merge_and_unload()
            atomic_folder(out / "model", lambda d: (merged.save_pretrained(d, safe_serialization=True),
                                                    tokenizer.save_pretrained(d)), "merged model")
    state.wait_for_everyone()
    return out / "model"


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
