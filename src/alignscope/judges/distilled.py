"""A distilled judge (`alignscope train-judge` fits one, `judges.train_judge`): a frozen LM backbone's
features of the answer, and per category an average of ridge regressions fitted to a reference
judge's ratings, so that its ratings lie on that judge's scale. It is a folder of JSON and
safetensors. Pairs are rated in length-sorted batches; ratings come back in input order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignscope.io import InputError, read_json
from alignscope.judges.base import DISTILLED_HEADS, DISTILLED_MANIFEST, FEATURE_SETS, FEATURES_VERSION, LOGIT_POSITIONS, LOGIT_WORDS, Judge
from alignscope.models import cache_keyword, load_causal_lm, load_tokenizer, model_fingerprint, resolve_model


def judge_text(prompt: str, answer: str) -> tuple[str, str]:
    """The dialogue up to the assistant's turn, and the answer, the same whatever the prompt
    format: the study's prompts end at the Human turn and its answers start with "Assistant:",
    ours end with "Assistant:" and their answers do not."""
    head = prompt.rstrip()
    head = head[:-len("Assistant:")].rstrip() if head.endswith("Assistant:") else head
    body = answer.strip()
    body = body[len("Assistant:"):].strip() if body.startswith("Assistant:") else body
    return head + "\n\nAssistant:", (" " + body) if body else ""


class BackboneFeatures:
    """What a frozen causal LM makes of an answer in its dialogue: per layer, the mean hidden state
    over the answer's tokens; the last token's final state; the answer's mean and lowest token
    log-probability, and its length."""

    def __init__(self, spec: str, allow_pickle: bool = False, max_length: int = 1024, batch_size: int = 8):
        import torch

        self.model, self.resolved = load_causal_lm(spec, allow_pickle)
        self.model.eval()
        if torch.cuda.is_available():
            self.model = self.model.cuda()
        self.tokenizer = load_tokenizer(self.resolved)
        self.max_length, self.batch_size = max_length, batch_size
        self.layers = self.model.config.get_text_config().num_hidden_layers

    def encode(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """Token ids of the dialogue then the answer (encoded apart, so the answer's tokens are
        known exactly), the dialogue cut from its start to fit; and the answer's token count."""
        head, body = judge_text(prompt, answer)
        head_ids = self.tokenizer(head)["input_ids"]
        body_ids = self.tokenizer(body, add_special_tokens=False)["input_ids"] if body else []
        body_ids = body_ids[:self.max_length // 2]
        keep = self.max_length - len(body_ids)
        return head_ids[:1] + head_ids[1:][-(keep - 1):] + body_ids, len(body_ids)

    def extract(self, prompts: list[str], answers: list[str], progress=None,
                share_dialogue: bool = True) -> dict[str, np.ndarray]:
        """{"mean": [n, layers + 1, hidden], "last": [n, hidden], "lp": [n, 3]}, in input order.

        share_dialogue=False runs every (dialogue, answer) through the backbone whole: the reference
        the shared pass is checked against."""
        import torch

        encoded = [self.encode(p, a) for p, a in zip(prompts, answers)]
        out = {"mean": [None] * len(encoded), "last": [None] * len(encoded), "lp": [None] * len(encoded)}
        with torch.inference_mode():
            (self._extract_shared if share_dialogue else self._extract_full)(encoded, out, progress)
        return {k: np.stack(v).astype(np.float64) for k, v in out.items()}

    def _extract_full(self, encoded: list[tuple[list[int], int]], out: dict, progress) -> None:
        import torch

        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]), reverse=True)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(encoded[i][0]) for i in rows)
            keep = max(encoded[i][1] for i in rows) + 1
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding: every answer ends at the last column
                ids[r, width - len(encoded[i][0]):] = torch.tensor(encoded[i][0])
                mask[r, width - len(encoded[i][0]):] = 1
            ids, mask = ids.to(device), mask.to(device)
            result = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                output_hidden_states=True, logits_to_keep=keep)
            states = torch.stack(result.hidden_states, 1).float()  # rows, layers + 1, width, hidden
            logprobs = torch.log_softmax(result.logits.float(), -1)  # rows, keep, vocab
            for r, i in enumerate(rows):
                n = encoded[i][1]
                span = states[r, :, width - max(n, 1):]  # an empty answer: its dialogue's last token
                out["mean"][i] = span.mean(1).cpu().numpy()
                out["last"][i] = states[r, -1, -1].cpu().numpy()
                if n:  # logits at column t predict token t + 1: the answer's from keep - n - 1 on
                    lp = logprobs[r, keep - n - 1:keep - 1].gather(-1, ids[r, width - n:, None])[:, 0]
                    out["lp"][i] = np.array([lp.mean().item(), lp.min().item(), np.log1p(n)])
                else:
                    out["lp"][i] = np.zeros(3)
            if progress:
                progress(len(rows))

    def _extract_shared(self, encoded: list[tuple[list[int], int]], out: dict, progress) -> None:
        """Each distinct dialogue once, then all of its answers from its KV cache.

        Grouped by the exact head ids: encode cuts a dialogue shorter beside a long answer.
        The caches hold every position, sliding-window layers included (their window is
        applied by the mask, over the same positions as a whole pass)."""
        answers_of: dict[tuple, list[int]] = {}
        for i, (ids, n) in enumerate(encoded):
            answers_of.setdefault(tuple(ids[:len(ids) - n]), []).append(i)
        heads = sorted(answers_of, key=len, reverse=True)
        batch: list[tuple] = []
        for k, head in enumerate(heads):  # dialogues together until their answers fill a batch
            batch.append(head)
            if sum(len(answers_of[h]) for h in batch) >= self.batch_size or k == len(heads) - 1:
                self._extract_dialogues(batch, [answers_of[h] for h in batch], encoded, out, progress)
                batch = []

    def _extract_dialogues(self, heads: list[tuple], rows_of: list[list[int]], encoded: list, out: dict,
                           progress) -> None:
        import torch
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        width = len(heads[0])
        ids = torch.full((len(heads), width), pad, dtype=torch.long)
        mask = torch.zeros((len(heads), width), dtype=torch.long)
        for j, head in enumerate(heads):  # left padding: every dialogue ends at the last column
            ids[j, width - len(head):] = torch.tensor(head)
            mask[j, width - len(head):] = 1
        ids, mask = ids.to(device), mask.to(device)
        # the body alone: the LM head runs on the positions that predict answer tokens only (answer_logprobs)
        body = self.model.base_model
        cache = DynamicCache()
        prefill = body(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       use_cache=True, output_hidden_states=True, **{cache_keyword(body): cache})
        head_states = torch.stack([s[:, -1] for s in prefill.hidden_states], 1)  # heads, layers + 1, hidden
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        answered = []
        for j, rows in enumerate(rows_of):
            for i in rows:
                if encoded[i][1]:
                    answered.append((j, i))
                else:  # an empty answer: its dialogue's last token
                    out["mean"][i] = head_states[j].cpu().numpy()
                    out["last"][i] = head_states[j, -1].cpu().numpy()
                    out["lp"][i] = np.zeros(3)
        if progress and len(answered) < sum(map(len, rows_of)):
            progress(sum(map(len, rows_of)) - len(answered))
        answered.sort(key=lambda ji: encoded[ji[1]][1], reverse=True)
        for start in range(0, len(answered), self.batch_size):
            chunk = answered[start:start + self.batch_size]
            self._continue(chunk, encoded, kv, mask, head_states[:, -1], out)
            if progress:
                progress(len(chunk))

    def _continue(self, chunk: list[tuple[int, int]], encoded: list, kv: list, head_mask, head_final,
                  out: dict) -> None:
        """Answers `chunk` ((dialogue, row) pairs) right-padded after their dialogues' cached states."""
        import torch
        from transformers import DynamicCache

        device = head_mask.device
        heads = torch.tensor([j for j, _ in chunk], device=device)
        lengths = [encoded[i][1] for _, i in chunk]
        m = max(lengths)
        ids = torch.full((len(chunk), m), self.tokenizer.pad_token_id, dtype=torch.long)
        answer_mask = torch.zeros((len(chunk), m), dtype=torch.long)
        for r, (_, i) in enumerate(chunk):
            ids[r, :lengths[r]] = torch.tensor(encoded[i][0][-lengths[r]:])
            answer_mask[r, :lengths[r]] = 1
        ids, answer_mask = ids.to(device), answer_mask.to(device)
        mask = torch.cat([head_mask[heads], answer_mask], 1)
        positions = head_mask[heads].sum(-1, keepdim=True) + torch.arange(m, device=device)
        cache = DynamicCache(ddp_cache_data=[(k[heads], v[heads]) for k, v in kv])
        body = self.model.base_model
        result = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                      output_hidden_states=True, **{cache_keyword(body): cache})
        final = result.hidden_states[-1]
        # the answer's token t is predicted by its dialogue's last position (t = 0) or its own token t - 1
        predictors = torch.cat([torch.cat([head_final[j, None], final[r, :n - 1]])
                                for r, ((j, _), n) in enumerate(zip(chunk, lengths))])
        logprobs = self.answer_logprobs(predictors, torch.cat([ids[r, :n] for r, n in enumerate(lengths)]))
        for r, (lp, (_, i)) in enumerate(zip(logprobs.split(lengths), chunk)):
            n = lengths[r]
            out["mean"][i] = torch.stack([s[r, :n].float().mean(0) for s in result.hidden_states]).cpu().numpy()
            out["last"][i] = final[r, n - 1].float().cpu().numpy()
            out["lp"][i] = np.array([lp.mean().item(), lp.min().item(), np.log1p(n)])

    def answer_logprobs(self, states, targets):
        """log p(target) at each of these final states, as the model's own logits give it: the LM head in
        blocks of positions and of the vocabulary, each block's logit of the target and logsumexp
        combined, so that no [positions, vocabulary] array (Gemma-3: 262k words) is ever made."""
        import torch

        head = self.model.get_output_embeddings()
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        out = []
        for start in range(0, len(states), LOGIT_POSITIONS):
            h, t = states[start:start + LOGIT_POSITIONS], targets[start:start + LOGIT_POSITIONS]
            total = torch.full((len(h),), -torch.inf, device=h.device)
            picked = torch.zeros(len(h), device=h.device)
            for v in range(0, head.weight.shape[0], LOGIT_WORDS):
                bias = head.bias[v:v + LOGIT_WORDS] if head.bias is not None else None
                logits = torch.nn.functional.linear(h, head.weight[v:v + LOGIT_WORDS], bias)
                if cap is not None:  # as Gemma's forward softcaps, in the model's dtype
                    logits = torch.tanh(logits / cap) * cap
                logits = logits.float()
                total = torch.logaddexp(total, torch.logsumexp(logits, -1))
                inside = (t >= v) & (t < v + logits.shape[1])
                picked[inside] = logits[inside, t[inside] - v]
            out.append(picked - total)
        return torch.cat(out)


def layer_step(layers: int) -> int:
    """Every how many layers the multilayer feature set takes a mean state: about nine of them."""
    return max(1, round(layers / 9))


def feature_set(features: dict[str, np.ndarray], name: str, layers: int) -> np.ndarray:
    """standard: the answer's mean state at the last layer and the middle one, the last token's
    state, log-probabilities and length; multilayer: the mean state at every few layers instead."""
    mean = features["mean"]
    if name == "standard":
        states = [mean[:, layers], mean[:, layers // 2]]
    elif name == "multilayer":
        step = layer_step(layers)
        states = [mean[:, step::step].reshape(len(mean), -1)]
    else:
        raise InputError(f"feature set {name!r}: expected one of {', '.join(FEATURE_SETS)}")
    return np.hstack(states + [features["last"], features["lp"]])


# feature_set ends every row with the answer's mean and lowest token log-probability and its length:
# alignment moves exactly these (shorter answers, EOS endings), so a judge fitted without them checks
# that a finding does not rest on them alone
LENGTH_LP_FEATURES = 3
BLIND_HEADS = "without_length_lp"


def without_length_lp(x: np.ndarray) -> np.ndarray:
    return x[:, :-LENGTH_LP_FEATURES]


class DistilledJudge(Judge):
    """A folder written by `alignscope train-judge`: backbones, feature sets, and per category
    ridge heads whose average is the rating, on the reference judge's scale."""

    def __init__(self, folder: str | Path, allow_pickle: bool = False):
        from safetensors.numpy import load_file

        self.folder = Path(folder)
        self.resolved = str(self.folder)
        self.manifest = read_json(self.folder / DISTILLED_MANIFEST)
        self.heads = load_file(self.folder / DISTILLED_HEADS)
        self.allow_pickle = allow_pickle
        self.extractors: list[BackboneFeatures] | None = None
        fitted = self.manifest.get("features_version", 1)
        if fitted != FEATURES_VERSION:
            raise InputError(f"{self.folder}: fitted to features of version {fitted}; this alignscope computes version "
                             f"{FEATURES_VERSION}. Fit the judge again (alignscope train-judge)")
        for b in self.manifest["backbones"]:
            now = model_fingerprint(resolve_model(b["spec"], allow_pickle))
            if now != b["fingerprint"]:
                raise InputError(f"{self.folder}: its backbone {b['spec']!r} has changed since the judge was fitted "
                                 f"(fingerprint {now}, fitted on {b['fingerprint']}); fit it again")

    def rate(self, questions: list[str], answers: list[str], categories: list[str] | None = None,
             max_length: int = 512, batch_size: int = 8, progress=None) -> tuple[list[float], list[int]]:
        if categories is None or len(categories) != len(questions):
            raise InputError(f"{self.folder}: a distilled judge rates each answer by its category (harmful or "
                             "helpful); give one per answer")
        ratings, _ = self.rate_checked(questions, answers, categories, progress)
        return ratings, [0] * len(questions)

    def describe(self) -> dict:
        return {"kind": "distilled", "model": self.resolved, "fingerprint": model_fingerprint(self.resolved),
                "backbones": [b["spec"] for b in self.manifest["backbones"]]}

    def rate_checked(self, questions: list[str], answers: list[str], categories: list[str],
                     progress=None) -> tuple[list[float], list[float] | None]:
        """Its ratings, and those of its heads fitted without the length and log-probability features
        (None for a judge fitted before it had them), from one pass of the backbones."""
        sets = self.feature_matrices(questions, answers, progress)
        blind = BLIND_HEADS in self.manifest
        ratings, checks = np.zeros(len(questions)), np.zeros(len(questions))
        for cat in set(categories):
            rows = np.array([c == cat for c in categories])
            ratings[rows] = self.predict(sets, cat, rows)
            if blind:
                checks[rows] = self.predict({k: without_length_lp(x) for k, x in sets.items()}, cat, rows, BLIND_HEADS)
        return [float(x) for x in ratings], [float(x) for x in checks] if blind else None

    def feature_matrices(self, questions: list[str], answers: list[str], progress=None) -> dict:
        if self.extractors is None:  # loaded once, on first use: rating comes in chunks
            self.extractors = [BackboneFeatures(b["spec"], self.allow_pickle, self.manifest["max_length"])
                               for b in self.manifest["backbones"]]
        sets = {}
        for i, (b, extractor) in enumerate(zip(self.manifest["backbones"], self.extractors)):
            features = extractor.extract(questions, answers, progress if i == 0 else None)
            for name in self.manifest["feature_sets"]:
                sets[i, name] = feature_set(features, name, b["layers"])
        return sets

    def predict(self, sets: dict, category: str, rows: np.ndarray, which: str = "heads") -> np.ndarray:
        heads = self.manifest[which].get(category)
        if heads is None:
            raise InputError(f"{self.folder}: no head for category {category!r}")
        prefix = "" if which == "heads" else f"{which}."
        preds = []
        for k, head in enumerate(heads):
            x = sets[head["backbone"], head["set"]][rows]
            w = {n: self.heads[f"{prefix}{category}.{k}.{n}"] for n in ("mean", "scale", "coef", "intercept")}
            preds.append(((x - w["mean"]) / w["scale"]) @ w["coef"] + w["intercept"][0])
        return np.mean(preds, 0)


