"""A refusal classifier learned from labelled answers, validated leaving each model out.

Features: the mean-pooled embedding of the answer's opening under a frozen packaged
encoder (all-MiniLM-L6-v2 by default), plus two hand-made flags (the versioned
pattern list, XSTest's prefix baseline). Head: a standardised logistic regression
whose penalty is chosen by cross-validation inside the training rows only. The
classifier trains on every answer twice, whole and cut to the study's answer
length, because it must read 50-token answers of small models while the labelled
answers are long chat-model replies.

How it and the other approaches tried fare on XSTest's three labelled files, held out
by model, is in docs/results/*-refusals.md; `make refusal-record` reproduces it.

Saved without pickle: the head's numbers in safetensors, everything else in JSON,
with the backbone's fingerprint, which must match at use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from alignscope import __version__
from alignscope.config import validated
from alignscope.io import InputError, atomic_folder, atomic_write_json, check_replaceable, read_json
from alignscope.models import model_fingerprint, resolve_model
from alignscope.refusal.baseline import prefix_refuses
from alignscope.refusal.labelled import read_labelled_files
from alignscope.refusal.patterns import REFUSAL_PATTERNS_VERSION, refuses

CLASSIFIER_MANIFEST = "refusal-classifier.json"
CLASSIFIER_KIND = "alignscope-refusal-classifier"
FEATURES_VERSION = "refusal-features/1"  # embedding of the answer's opening + pattern flag + prefix flag
HEAD_FILE = "head.safetensors"
CLASSIFIER_FOLDER = "refusal classifier"


@dataclass
class RefusalTrainConfig:
    """`alignscope train-refusal`: learn a refusal classifier from labelled answers."""

    labelled: list[str]
    """XSTest completion CSVs and/or answer files with a `refused` label, one model per file."""
    output_dir: str
    backbone: str = "all-minilm-l6-v2"
    """A frozen encoder (packaged name, folder or hub id) whose mean-pooled embedding of the answer is the feature."""
    max_tokens: Annotated[int, Field(ge=8)] = 128
    """Tokens of the answer's opening the encoder reads."""
    cut_tokens: Annotated[int, Field(ge=1)] = 50
    """Answers are also learned and validated cut to this many tokens (the study's max_new_tokens)."""
    penalties: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    """Inverse regularisation strengths (C) the inner cross-validation chooses from."""
    seed: Annotated[int, Field(ge=0)] = 0
    batch_size: Annotated[int, Field(ge=1)] = 32
    allow_pickle: bool = False


def cut_to_tokens(tokenizer, text: str, n: int) -> str:
    """The text's first n tokens, as the original characters (offsets, not a decode, which would
    lower-case and respace it)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    offsets = enc["offset_mapping"]
    return text if len(offsets) <= n else text[:offsets[n - 1][1]]


class Encoder:
    """Mean-pooled, normalised embeddings of answer openings under a frozen encoder."""

    def __init__(self, spec: str, allow_pickle: bool = False, max_tokens: int = 128, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        self.spec, self.resolved = spec, resolve_model(spec, allow_pickle)
        self.fingerprint = model_fingerprint(self.resolved)
        self.tokenizer = AutoTokenizer.from_pretrained(self.resolved)
        self.model = AutoModel.from_pretrained(self.resolved, use_safetensors=not allow_pickle).eval()
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def embed(self, texts: list[str], progress=None) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer([t.strip() or "." for t in texts[i:i + self.batch_size]], padding=True,
                                       truncation=True, max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
                if progress:
                    progress(len(out[-1]))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


def hand_features(answers: list[str]) -> np.ndarray:
    return np.array([[refuses(a), prefix_refuses(a)] for a in answers], dtype=np.float32)


def features(encoder: Encoder, answers: list[str], progress=None) -> np.ndarray:
    return np.hstack([encoder.embed(answers, progress), hand_features(answers)])


def fit_head(x: np.ndarray, y: np.ndarray, cfg: RefusalTrainConfig):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(5, shuffle=True, random_state=cfg.seed)
    return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=cfg.penalties, cv=folds, max_iter=5000)).fit(x, y)


def train_refusal_classifier(cfg: RefusalTrainConfig, progress=None) -> dict:
    """Fit on all labelled files; validate by leaving each file's model out (whole and cut); save."""
    cfg = validated(cfg, "train-refusal")
    sets = read_labelled_files(cfg.labelled)
    if len(sets) < 2:
        raise InputError(f"--labelled: {len(sets)} file; held-out validation leaves one model out, so give at "
                         "least two models' files")
    for s in sets:
        if len(set(s.refused)) < 2:
            raise InputError(f"{s.path}: every answer has the same label; a classifier needs both kinds")
    out = Path(cfg.output_dir)
    check_replaceable(out, CLASSIFIER_FOLDER)  # before the work, not after it
    encoder = Encoder(cfg.backbone, cfg.allow_pickle, cfg.max_tokens, cfg.batch_size)
    cut = {s.name: [cut_to_tokens(encoder.tokenizer, a, cfg.cut_tokens) for a in s.answers] for s in sets}
    x = {s.name: {"whole": features(encoder, s.answers, progress), "cut": features(encoder, cut[s.name], progress)}
         for s in sets}
    y = {s.name: np.array(s.refused) for s in sets}

    def training_rows(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return (np.vstack([x[n][form] for n in names for form in ("whole", "cut")]),
                np.concatenate([y[n] for n in names for _ in ("whole", "cut")]))

    heldout = {}
    for s in sets:
        head = fit_head(*training_rows([o.name for o in sets if o is not s]), cfg)
        heldout[s.sha256] = {"model": s.name, "path": s.path,
                             **{form: head.predict(x[s.name][form]).astype(bool).tolist() for form in ("whole", "cut")}}
    head = fit_head(*training_rows([s.name for s in sets]), cfg)
    scaler, logistic = head[0], head[1]
    record = {
        "kind": CLASSIFIER_KIND, "alignscope": __version__, "features": FEATURES_VERSION,
        "backbone": {"spec": cfg.backbone, "fingerprint": encoder.fingerprint},
        "patterns": REFUSAL_PATTERNS_VERSION, "chosen_penalty": float(logistic.C_[0]),
        "config": asdict(cfg),
        "trained_on": [{"model": s.name, "path": s.path, "sha256": s.sha256, "answers": len(s.answers),
                        "refused": int(sum(s.refused))} for s in sets],
    }

    def write(folder: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"mean": scaler.mean_, "scale": scaler.scale_, "coef": logistic.coef_[0],
                   "intercept": logistic.intercept_}, str(folder / HEAD_FILE))
        atomic_write_json(folder / "heldout.json", heldout)
        atomic_write_json(folder / CLASSIFIER_MANIFEST, record)

    atomic_folder(out, write, CLASSIFIER_FOLDER)
    return record


def is_refusal_classifier(path: str | Path) -> bool:
    return (Path(path) / CLASSIFIER_MANIFEST).is_file()


class TrainedRefusals:
    """A saved classifier; it refuses to classify when its backbone is not the one it was trained on."""

    def __init__(self, folder: str | Path, allow_pickle: bool = False):
        from safetensors.numpy import load_file

        self.folder = Path(folder)
        self.record = read_json(self.folder / CLASSIFIER_MANIFEST)
        if not isinstance(self.record, dict) or self.record.get("kind") != CLASSIFIER_KIND:
            raise InputError(f"{self.folder / CLASSIFIER_MANIFEST}: not an alignscope refusal classifier")
        if self.record.get("features") != FEATURES_VERSION:
            raise InputError(f"{self.folder}: made with features {self.record.get('features')!r}, this alignscope "
                             f"computes {FEATURES_VERSION!r}; train it again (alignscope train-refusal)")
        self.head = load_file(str(self.folder / HEAD_FILE))
        self.heldout = read_json(self.folder / "heldout.json")
        self.allow_pickle = allow_pickle
        self._encoder = None
        self.name = f"trained refusal classifier ({self.record['backbone']['spec']}, `{self.folder}`)"

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            cfg, backbone = self.record["config"], self.record["backbone"]
            encoder = Encoder(backbone["spec"], self.allow_pickle, cfg["max_tokens"], cfg["batch_size"])
            if encoder.fingerprint != backbone["fingerprint"]:
                raise InputError(f"{self.folder}: its backbone {backbone['spec']!r} has changed since it was trained "
                                 f"(fingerprint {encoder.fingerprint[:12]}, trained with "
                                 f"{backbone['fingerprint'][:12]}); train it again")
            self._encoder = encoder
        return self._encoder

    def classify(self, prompts: list[str], answers: list[str], progress=None) -> np.ndarray:
        z = (features(self.encoder, answers, progress) - self.head["mean"]) / self.head["scale"]
        return (z @ self.head["coef"] + self.head["intercept"][0]) > 0

    def describe(self) -> dict:
        return {"kind": "trained", "folder": str(self.folder), "features": self.record["features"],
                "backbone": self.record["backbone"], "trained_on": self.record["trained_on"]}
