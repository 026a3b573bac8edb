"""Anthropic HH-RLHF: load any subset and split, from the hub or a local folder,
and split every pair into its shared prompt and the two replies.

The hub path downloads the official `<subset>/<split>.jsonl.gz` file with
`huggingface_hub` and reads it with the same parser as a local folder, so both
give the same rows in the same order, and both can be hashed for provenance.
We parse the JSON lines ourselves rather than through `datasets` because a bad
row must be reported by file and line.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Iterator, Literal, get_args

from pydantic import Field

from alignscope.answers import answer_files, read_answers
from alignscope.io import InputError, read_json, sha256_file
from alignscope.models import is_network_error

HUB_DATASET = "Anthropic/hh-rlhf"
Subset = Literal["harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"]
Split = Literal["train", "test"]
SUBSETS, SPLITS = get_args(Subset), get_args(Split)
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass
class DataConfig:
    """Which HH-RLHF rows to read and how strictly."""

    source: str = "hub"
    """`hub` (Anthropic/hh-rlhf) or a local folder in the official layout."""
    subsets: list[Subset] = field(default_factory=lambda: ["harmless-base", "helpful-base"])
    split: Split = "train"
    revision: str | None = None
    """Hub revision (commit or tag) to pin; recorded in the data manifest."""
    strict: bool = True
    """Fail on the first bad row; when false, skip bad rows and list them in the summary."""
    drop_identical: bool = False
    drop_empty: bool = False
    drop_duplicate_prompts: bool = False
    limit: Annotated[int, Field(ge=1)] | None = None
    """Keep at most this many pairs per subset, in file order, after filtering."""
    exclude_prompts_of: str | list[str] | None = None
    """Evaluation set JSON files, or folders of answer files (rated or not): pairs that share a dialogue with
    one of their prompts are left out."""


@dataclass(frozen=True)
class Turn:
    role: str  # "Human" or "Assistant"
    text: str


@dataclass(frozen=True)
class HHPair:
    """One preference pair. `prompt + chosen` is the chosen dialogue with its
    leading blank lines removed; likewise for `rejected`."""

    id: str  # "<subset>/<split>/<line>", stable across hub and local copies
    subset: str
    split: str
    line: int  # 1-based line in the source file
    prompt: str  # shared dialogue, up to and including the last "\n\nAssistant:"
    chosen: str
    rejected: str

    @property
    def chosen_dialogue(self) -> str:
        return self.prompt + self.chosen

    @property
    def turns(self) -> list[Turn]:
        """The prompt's turns, oldest first; the last is the Human turn being answered."""
        return parse_turns(self.prompt)


def parse_turns(dialogue: str) -> list[Turn]:
    text = dialogue if dialogue.startswith("\n\n") else "\n\n" + dialogue
    parts = _TURN.split(text)
    # parts = [preamble, role, text, role, text, ...]
    return [Turn(role, body.strip()) for role, body in zip(parts[1::2], parts[2::2])
            if body.strip() or role == "Human"]


def split_pair(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) of one HH-RLHF row.

    The prompt is the longest shared prefix that ends in "\\n\\nAssistant:". Taking
    the *shared* prefix, not the chosen side's last Assistant turn, matters: a few
    replies in the real data contain invented extra turns of their own.
    """
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise InputError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    c, r = "\n\n" + chosen.lstrip(), "\n\n" + rejected.lstrip()
    for name, text in (("chosen", c), ("rejected", r)):
        if HUMAN not in text or ASSISTANT not in text:
            raise InputError(f"{where}: the {name} dialogue has no "
                             f"{'Human' if HUMAN not in text else 'Assistant'} turn")
    n, limit = 0, min(len(c), len(r))
    while n < limit and c[n] == r[n]:
        n += 1
    end = c.rfind(ASSISTANT, 0, n)
    if end < 0 or c.find(HUMAN, 0, end) < 0:
        raise InputError(f"{where}: chosen and rejected do not share a prompt "
                         "(no common dialogue ending in an Assistant turn)")
    end += len(ASSISTANT)
    return c[2:end], c[end:], r[end:]


def paper_prompt(chosen_dialogue: str) -> str:
    """The reference study's prompt: the chosen text stripped, split on blank lines,
    the last part dropped when it is the Assistant's, joined back. It ends at the
    Human turn, and keeps earlier paragraphs of a multi-paragraph final reply."""
    parts = chosen_dialogue.strip().split("\n\n")
    if parts[-1].startswith("Assistant:"):
        parts = parts[:-1]
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- files

def _local_file(folder: Path, subset: str, split: str) -> Path:
    for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
        if (folder / subset / name).is_file():
            return folder / subset / name
    raise InputError(f"{folder}: no {subset}/{split}.jsonl or {subset}/{split}.jsonl.gz "
                     "(expected the official Anthropic/hh-rlhf layout)")


def _hub_file(subset: str, split: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    name = f"{HUB_DATASET}/{subset}/{split}.jsonl.gz" + (f" at revision {revision!r}" if revision else "")
    try:
        return Path(hf_hub_download(HUB_DATASET, f"{subset}/{split}.jsonl.gz",
                                    repo_type="dataset", revision=revision))
    except HfHubHTTPError as e:  # the hub answered, and said no (401, 404): not a network problem
        raise InputError(f"the hub refused {name}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    except Exception as e:
        if not is_network_error(e):
            raise
        raise InputError(f"could not fetch {name} from the hub ({type(e).__name__}: {e}); with no network, "
                         "pass a local copy with --data DIR (official layout)") from None


def resolve_file(source: str, subset: str, split: str, revision: str | None = None) -> Path:
    if subset not in SUBSETS:
        raise InputError(f"unknown HH-RLHF subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if source == "hub":
        return _hub_file(subset, split, revision)
    folder = Path(source)
    if not folder.is_dir():
        raise InputError(f"data source {source!r} is neither 'hub' nor an existing folder")
    return _local_file(folder, subset, split)


def read_jsonl(path: Path) -> Iterator[tuple[int, object, str | None]]:
    """Yield (line number, parsed object or None, error or None) for each line."""
    opener = gzip.open if path.suffix == ".gz" else open
    line_no = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line), None
                except json.JSONDecodeError as e:
                    yield line_no, None, f"not valid JSON ({e.msg} at column {e.colno})"
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        yield line_no + 1, None, f"gzip stream is truncated or corrupt after line {line_no} ({e})"
    except UnicodeDecodeError as e:
        yield line_no + 1, None, f"not UTF-8 text ({e.reason})"


# --------------------------------------------------------------------------- loading

@dataclass
class LoadedData:
    pairs: list[HHPair]
    summary: dict


def load_subset(source: str, subset: str, split: str, *, strict: bool = True,
                revision: str | None = None) -> tuple[list[HHPair], dict]:
    """Every pair of one subset/split in file order, and what was read from where."""
    path = resolve_file(source, subset, split, revision)
    pairs, skipped = [], []
    for line, row, error in read_jsonl(path):
        where = f"{path}, line {line}"
        try:
            if error:
                raise InputError(f"{where}: {error}")
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object with 'chosen' and 'rejected'")
            missing = [k for k in ("chosen", "rejected") if k not in row]
            if missing:
                raise InputError(f"{where}: missing field {' and '.join(repr(m) for m in missing)}")
            prompt, chosen, rejected = split_pair(row["chosen"], row["rejected"], where)
        except InputError as e:
            if strict:
                raise
            skipped.append({"file": str(path), "line": line, "reason": str(e).removeprefix(where + ": ")})
            continue
        pairs.append(HHPair(f"{subset}/{split}/{line}", subset, split, line, prompt, chosen, rejected))
    info = {"subset": subset, "split": split, "source": source, "path": str(path),
            "sha256": sha256_file(path), "revision": revision, "rows": len(pairs), "skipped": skipped}
    return pairs, info


def apply_filters(pairs: list[HHPair], cfg: DataConfig, seen_prompts: set[str]) -> tuple[list[HHPair], dict]:
    counts = {"identical": 0, "empty_reply": 0, "duplicate_prompt": 0}
    kept = []
    for p in pairs:
        if cfg.drop_identical and p.chosen.strip() == p.rejected.strip():
            counts["identical"] += 1
        elif cfg.drop_empty and (not p.chosen.strip() or not p.rejected.strip()):
            counts["empty_reply"] += 1
        elif cfg.drop_duplicate_prompts and p.prompt in seen_prompts:
            counts["duplicate_prompt"] += 1
        else:
            seen_prompts.add(p.prompt)
            kept.append(p)
    return kept, counts


def load_pairs(cfg: DataConfig, excluded_prompts: set[str] | None = None) -> LoadedData:
    """The pairs `cfg` selects, with a summary of sources, skips and filters.

    `excluded_prompts` are dialogues that must not be trained on, typically the
    evaluation set's (either prompt format). A pair is left out when it opens with
    the same Human turn as one of them: HH-RLHF holds several branches of one
    conversation, and any of them would leak the evaluation prompt."""
    all_pairs, files, filtered = [], [], []
    seen: set[str] = set()
    excluded_count = 0
    excluded_prompts = set(excluded_prompts or ())
    for path in excluded_sources(cfg):
        excluded_prompts |= evalset_prompts(path)
    openings = {first_human_turn(p) for p in excluded_prompts}
    for subset in cfg.subsets:
        pairs, info = load_subset(cfg.source, subset, cfg.split, strict=cfg.strict, revision=cfg.revision)
        if openings:
            before = len(pairs)
            pairs = [p for p in pairs if not _shares_dialogue(p, openings)]
            excluded_count += before - len(pairs)
        pairs, counts = apply_filters(pairs, cfg, seen)
        if cfg.limit is not None:
            pairs = pairs[: cfg.limit]
        files.append(info)
        filtered.append({"subset": subset, **counts})
        all_pairs.extend(pairs)
    summary = {
        "config": asdict(cfg),
        "files": files,
        "skipped_rows": sum(len(f["skipped"]) for f in files),
        "filtered": filtered,
        "excluded_for_evaluation": excluded_count,
        "pairs": len(all_pairs),
    }
    return LoadedData(all_pairs, summary)


def data_fingerprint(cfg: DataConfig) -> dict:
    """The data settings with each path replaced by what it holds: the same rows read from
    another folder, or the hub's copy of the same files, fingerprint alike."""
    d = asdict(cfg)
    d["source"] = [sha256_file(resolve_file(cfg.source, subset, cfg.split, cfg.revision)) for subset in cfg.subsets]
    d.pop("revision")  # the files' hashes already say which revision they are
    if cfg.exclude_prompts_of:
        d["exclude_prompts_of"] = sorted(set().union(*map(evalset_prompts, excluded_sources(cfg))))
    return d


def excluded_sources(cfg: DataConfig) -> list[str]:
    given = cfg.exclude_prompts_of
    return [] if not given else [given] if isinstance(given, str) else list(given)


def evalset_prompts(path: str | Path) -> set[str]:
    """Every prompt of an evaluation set file (see `alignscope.evalset`), or of a folder of answer files."""
    if Path(path).is_dir():
        return {item["prompt"] for f in answer_files(path) for item in read_answers(f.path)}
    doc = read_json(path)
    try:
        return {item["prompt"] for cat in ("harmful", "helpful") for item in doc[cat]}
    except (KeyError, TypeError):
        raise InputError(f"{path}: not an evaluation set (expected 'harmful' and 'helpful' "
                         "lists of {'id', 'prompt'})") from None


def first_human_turn(dialogue: str) -> str:
    """The opening Human turn: HH-RLHF rows that start alike are branches of one conversation."""
    turns = parse_turns(dialogue)
    return turns[0].text if turns else dialogue.strip()


def _shares_dialogue(pair: HHPair, openings: set[str]) -> bool:
    return first_human_turn(pair.prompt) in openings


def summary_text(summary: dict) -> str:
    """A few human lines for the CLI."""
    lines = []
    for f, flt in zip(summary["files"], summary["filtered"]):
        drops = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in flt.items() if k != "subset" and v)
        lines.append(f"{f['subset']}/{f['split']}: {f['rows']} pairs from {f['path']}"
                     + (f", skipped {len(f['skipped'])} bad rows" if f["skipped"] else "")
                     + (f", dropped {drops}" if drops else ""))
        for s in f["skipped"][:10]:
            lines.append(f"  skipped line {s['line']}: {s['reason']}")
        if len(f["skipped"]) > 10:
            lines.append(f"  ... and {len(f['skipped']) - 10} more (see the data summary)")
    if summary.get("excluded_for_evaluation"):
        lines.append(f"left out {summary['excluded_for_evaluation']} pairs that share a dialogue with the evaluation set")
    lines.append(f"total: {summary['pairs']} pairs")
    return "\n".join(lines)
