"""Did training learn its own objective? Measured on pairs it never saw.

- SFT: the per-token loss of the held-out chosen replies (their summed negative
  log-likelihood over their token count), before and after training.
- DPO: each held-out pair's implicit rewards, r(y) = log pi(y|x) - log pi_ref(y|x)
  summed over the reply; the accuracy is the share of pairs with r(chosen) >
  r(rejected) (a Wilson interval on the count), the margin r(chosen) - r(rejected)
  in nats. Before training the policy is its reference and every pair ties, so
  chance is 50% and a margin of 0.

The replies are tokenized by the trainer itself (TRL's own eval dataset and
collator), so a held-out pair is scored exactly as a training pair would be.

Held-out pairs are the last rows of each subset, in file order (of the training
split unless told another), that share no
dialogue (opening user turn) with the evaluation set, the rows this run trains on
or the rows its starting model was trained on (read from that model's run folder).
Training takes the first rows, so the two ends never meet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from pydantic import Field

from alignscope.data import DataConfig, Pair, first_human_turn, load_pairs
from alignscope.io import read_json
from alignscope.shared_prompt import completion_logps

# an opening's key in a run's manifest: 64 bits of its sha256 (a full train split is ~160k of them)
KEY_HEX = 16


@dataclass
class HeldoutSettings:
    """The held-out pairs that show whether training learned its objective."""

    pairs: Annotated[int, Field(ge=0)] = 120
    """How many, shared evenly among the subsets (0: none)."""
    split: str | None = None
    """The split to take them from (HH-RLHF, hub datasets); default: the training split, whose last rows a
    short run never reaches. A run over a whole split needs another (the reference recipes: test)."""
    skip: Annotated[int, Field(ge=0)] = 0
    """Pass over this many of the last pairs first (shared the same way): a validation block for choosing
    settings, just before the held-out pairs a study reports, never overlapping them."""
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    """Level of the intervals written to done.json; a study's report shows them at this level and says which."""


def opening_key(prompt) -> str:
    return hashlib.sha256(first_human_turn(prompt).encode()).hexdigest()[:KEY_HEX]


def inherited_openings(model: str) -> set[str]:
    """The dialogues an alignscope-trained starting model (and its own ancestors) trained on."""
    manifest = Path(model).parent / "data_manifest.json"
    if not Path(model).is_dir() or not manifest.is_file():
        return set()
    return set(read_json(manifest).get("trained_openings", []))


def heldout_pairs(data: DataConfig, settings: HeldoutSettings, trained: set[str]) -> tuple[list[Pair], dict]:
    """The last `settings.pairs` pairs (shared among subsets, in file order) that share no dialogue
    with `trained` (opening keys) or with the evaluation set the data config excludes."""
    if settings.pairs == 0:
        return [], {"pairs": 0}
    split = settings.split or data.split
    loaded = load_pairs(replace(data, split=split, limit=None))
    by_subset: dict[str, list[Pair]] = {}
    for p in loaded.pairs:
        by_subset.setdefault(p.subset, []).append(p)
    chosen, counts, left_out = [], {}, 0
    for i, (subset, pairs) in enumerate(by_subset.items()):
        fresh = [p for p in pairs if opening_key(p.prompt) not in trained]
        left_out += len(pairs) - len(fresh)
        end = len(fresh) - even_share(settings.skip, len(by_subset), i)
        take = fresh[max(end - even_share(settings.pairs, len(by_subset), i), 0):max(end, 0)]
        chosen += take
        counts[subset] = len(take)
    return chosen, {"pairs": len(chosen), "split": split, "skip": settings.skip, "by_subset": counts,
                    "left_out_as_trained": left_out,
                    "left_out_for_evaluation": loaded.summary["excluded_for_evaluation"],
                    "ids": [p.id for p in chosen]}


def even_share(total: int, parts: int, i: int) -> int:
    """Part i of `total` shared evenly among `parts`, the first ones taking the remainder."""
    share, extra = divmod(total, parts)
    return share + (i < extra)


# --------------------------------------------------------------------------- scoring

def sequence_logps(model, batch, share_prompts: bool = True) -> tuple:
    """Summed log-probability of each sequence's labelled tokens, and their count.

    `batch` is a TRL collator's: DPO's marks the replies with `completion_mask`, SFT's with
    `labels` (-100 elsewhere). Padding-free SFT batches pack several sequences into one row,
    each starting at position 0; they are split back apart. Only positions from the batch's first
    labelled token on go through the LM head (`logits_to_keep`): an HH prompt is most of a pair's
    tokens, and the head is a fifth of SmolLM2's forward pass and most of Gemma's. A DPO pair's two
    rows run their shared prompt once where the model allows (`shared_prompt`; `share_prompts=False`
    keeps the two-row path, the reference the shared one is tested against)."""
    import torch

    if share_prompts and "completion_mask" in batch and (token_logps := completion_logps(model, batch)) is not None:
        return token_logps.sum(1), batch["completion_mask"].sum(1).float()
    ids = batch["input_ids"]
    if "labels" in batch:
        labels = batch["labels"]
    else:
        labels = ids.masked_fill(batch["completion_mask"] == 0, -100)
    kwargs = {"input_ids": ids}
    for key in ("attention_mask", "position_ids"):
        if key in batch:
            kwargs[key] = batch[key]
    # logits at position t predict token t + 1: keep positions start .. end - 2
    labelled = (labels[:, 1:] != -100).any(0).nonzero()
    start = int(labelled[0]) if len(labelled) else ids.shape[1] - 1
    if takes_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=ids.shape[1] - start).logits[:, :-1]
    else:
        logits = model(**kwargs).logits[:, start:-1]
    target = labels[:, start + 1:]
    keep = target != -100
    token_logps = torch.zeros(target.shape, dtype=torch.float32, device=logits.device)
    picked = torch.log_softmax(logits[keep].float(), dim=-1).gather(1, target[keep].unsqueeze(1)).squeeze(1)
    token_logps[keep] = picked
    if "position_ids" in batch and ids.shape[0] == 1:
        starts = batch["position_ids"][0] == 0
        segment = (starts.cumsum(0)[1:] - 1)[start:]
        n = int(starts.sum())
        sums = torch.zeros(n, device=logits.device).index_add(0, segment, token_logps[0])
        counts = torch.zeros(n, device=logits.device).index_add(0, segment, keep[0].float())
        return sums, counts
    return token_logps.sum(1), keep.sum(1).float()


def takes_logits_to_keep(model) -> bool:
    """Whether the causal LM under any PEFT or DDP wrapper can project only the last positions
    (transformers' own models can; a user's remote code may not)."""
    import inspect

    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


LOGPS_VERSION = 2  # 2: a DPO pair's prompt runs once for both replies (rounding differs by ~1e-6)
"""Part of every cached log-prob's key: bump it when `sequence_logps` changes the numbers it returns."""


def scored_sequences(collator, row) -> list[tuple[list[int], list[int]]]:
    """A dataset row's sequences as `sequence_logps` sees them (DPO: chosen, then rejected), padding
    removed: (token ids, labels with -100 off the reply). Collated alone, so no other row pads it."""
    import torch

    batch = collator([row])
    ids = batch["input_ids"]
    labels = batch["labels"] if "labels" in batch else ids.masked_fill(batch["completion_mask"] == 0, -100)
    real = batch["attention_mask"] == 1 if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    return [(ids[r][real[r]].tolist(), labels[r][real[r]].tolist()) for r in range(ids.shape[0])]


def scoring_settings(trainer, model) -> dict:
    """What decides a log-prob besides the weights and the tokens: precision, device, library versions."""
    import torch
    import transformers

    weight = next(model.parameters())
    return {"version": LOGPS_VERSION, "mixed_precision": str(trainer.accelerator.mixed_precision),
            "dtype": str(weight.dtype), "device": weight.device.type, "max_length": trainer.args.max_length,
            "torch": torch.__version__, "transformers": transformers.__version__}


def dataloader_logps(trainer, model, dataloader) -> tuple[list[float], list[float]]:
    """Every sequence's (summed log-prob, labelled tokens) over an eval dataloader, gathered across
    processes in dataset order."""
    import os

    import torch
    from tqdm import tqdm

    sums, counts = [], []
    was_training = model.training
    model.eval()
    quiet = os.environ.get("ALIGNSCOPE_QUIET") == "1" or not trainer.accelerator.is_main_process
    with torch.no_grad():
        for batch in tqdm(dataloader, desc="held-out scoring", unit="batch", leave=False, disable=quiet or None):
            s, c = sequence_logps(model, batch)
            if "completion_mask" in batch:
                # DPO rows are [chosen..., rejected...]: gather each half so the pairs stay aligned
                half = s.shape[0] // 2
                s = torch.stack([s[:half], s[half:]], 1)
                c = torch.stack([c[:half], c[half:]], 1)
            sums += trainer.accelerator.gather_for_metrics(s).tolist()
            counts += trainer.accelerator.gather_for_metrics(c).tolist()
    model.train(was_training)
    return sums, counts


# --------------------------------------------------------------------------- summaries

def sft_summary(before: list[float], after: list[float], tokens: list[float], confidence: float,
                seed: int = 0) -> dict:
    """Per-token loss before and after on the same replies; the change's percentile bootstrap
    interval over replies (the loss is a ratio of sums, so replies are resampled whole)."""
    import numpy as np
    from scipy import stats

    nll_before, nll_after, n = -np.array(before), -np.array(after), np.array(tokens)

    def change(b, a, t, axis=-1):
        return (a.sum(axis) - b.sum(axis)) / t.sum(axis)

    ci = stats.bootstrap((nll_before, nll_after, n), change, paired=True, vectorized=True, n_resamples=2000,
                         confidence_level=confidence, method="percentile", random_state=seed).confidence_interval
    return {"replies": len(n), "tokens": int(n.sum()), "loss_before": float(nll_before.sum() / n.sum()),
            "loss_after": float(nll_after.sum() / n.sum()), "change": float(change(nll_before, nll_after, n)),
            "change_ci": [float(ci.low), float(ci.high)], "confidence": confidence,
            "learned": bool(ci.high < 0)}


def dpo_summary(policy: list[list[float]], reference: list[list[float]], subsets: list[str],
                confidence: float) -> dict:
    """Implicit-reward accuracy (Wilson interval) and mean margin (t interval), overall and per subset."""
    import numpy as np
    from scipy import stats

    ratios = np.array(policy) - np.array(reference)  # [pair, (chosen, rejected)]
    margins = ratios[:, 0] - ratios[:, 1]

    def summary(m: np.ndarray) -> dict:
        correct, n = int((m > 0).sum()), len(m)
        ci = stats.binomtest(correct, n).proportion_ci(confidence, method="wilson") if n else None
        margin_ci = (stats.ttest_1samp(m, 0).confidence_interval(confidence) if n > 1 else None)
        return {"pairs": n, "correct": correct, "ties": int((m == 0).sum()),
                "accuracy": correct / n if n else None,
                "accuracy_ci": [float(ci.low), float(ci.high)] if ci else None,
                "margin": float(m.mean()) if n else None,
                "margin_ci": [float(margin_ci.low), float(margin_ci.high)] if margin_ci else None}

    result = summary(margins)
    result["by_subset"] = {s: summary(margins[np.array(subsets) == s]) for s in dict.fromkeys(subsets)}
    result["confidence"] = confidence
    result["learned"] = bool(result["accuracy_ci"] and result["accuracy_ci"][0] > 0.5)
    return result


def describe(record: dict) -> str:
    """One line for the training log."""
    if "dpo" in record:
        d = record["dpo"]
        return (f"held-out implicit-reward accuracy {d['correct']}/{d['pairs']} = {d['accuracy']:.2f} "
                f"[{d['accuracy_ci'][0]:.2f}, {d['accuracy_ci'][1]:.2f}], mean margin {d['margin']:+.3f} nats")
    s = record["sft"]
    return (f"held-out per-token loss {s['loss_before']:.3f} -> {s['loss_after']:.3f} "
            f"({s['change']:+.3f} [{s['change_ci'][0]:+.3f}, {s['change_ci'][1]:+.3f}]) on {s['replies']} replies")
