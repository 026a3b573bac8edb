"""Training pairs: Anthropic HH-RLHF (the default), or any data in TRL's standard
formats, from a file or the hub.

HH-RLHF: any subset and split, from the hub or a local folder; every pair is split
into its shared prompt and the two replies. The hub path downloads the official
`<subset>/<split>.jsonl.gz` file with `huggingface_hub` and reads it with the same
parser as a local folder, so both give the same rows in the same order, and both
can be hashed for provenance.

Other data: prompt/chosen/rejected (the prompt explicit or implicit), prompt/completion
or messages, each field a string or a list of {role, content} messages, from a
JSONL, JSON, Parquet or CSV file or a hub dataset. JSON lines are parsed here, so
that a bad row is reported by file and line; the other files and hub datasets are
read through `datasets` and a bad row is reported by its index.
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
    """Which rows to read and how strictly."""

    source: str = "hub"
    """`hub` (Anthropic/hh-rlhf), a local folder in its layout, a file in one of TRL's standard formats
    (.jsonl, .jsonl.gz, .json, .parquet, .csv), or `hub:owner/name` for any dataset on the hub."""
    subsets: list[Subset] = field(default_factory=lambda: ["harmless-base", "helpful-base"])
    """HH-RLHF's subsets to read (HH-RLHF only)."""
    split: str = "train"
    """HH-RLHF: train or test; a hub dataset: any of its splits; a file: not used."""
    revision: str | None = None
    """Hub revision (commit, branch or tag) to pin; the commit read is recorded in the data manifest."""
    config: str | None = None
    """A hub dataset's configuration (subset), when it has several."""
    columns: dict[str, str] = field(default_factory=dict)
    """Standard field -> the column holding it, e.g. {prompt: question, chosen: better, rejected: worse}."""
    as_messages: bool = False
    """HH-RLHF: hand its dialogues to TRL as user/assistant messages, so a chat model trains in its own template."""
    strict: bool = True
    """Fail on the first bad row; when false, skip bad rows and list them in the summary."""
    drop_identical: bool = False
    drop_empty: bool = False
    drop_duplicate_prompts: bool = False
    limit: Annotated[int, Field(ge=1)] | None = None
    """Keep at most this many pairs per subset (per source for other data), in file order, after filtering."""
    exclude_prompts_of: str | list[str] | None = None
    """Evaluation set JSON files, or folders of answer files (rated or not): pairs that open with the same user
    turn as one of their prompts are left out."""


@dataclass(frozen=True)
class Turn:
    role: str  # "Human" or "Assistant"
    text: str


Messages = list  # [{"role": ..., "content": ...}, ...], TRL's conversational form


@dataclass(frozen=True)
class Pair:
    """One training row. HH-RLHF: `prompt + chosen` is the chosen dialogue with its leading
    blank lines removed; likewise for `rejected`. Other data: each field a string, or each
    a list of messages; `rejected` is None for SFT-only data (prompt/completion, messages)."""

    id: str  # HH-RLHF: "<subset>/<split>/<line>", stable across hub and local copies
    subset: str  # HH-RLHF's subset, or the name of the file or hub dataset
    split: str
    line: int  # 1-based line in a JSONL file, else the 0-based row index
    prompt: str | Messages  # HH-RLHF: shared dialogue, up to and including the last "\n\nAssistant:"
    chosen: str | Messages
    rejected: str | Messages | None

    @property
    def chosen_dialogue(self) -> str:
        return self.prompt + self.chosen

    @property
    def turns(self) -> list[Turn]:
        """The prompt's turns, oldest first; the last is the Human turn being answered."""
        return parse_turns(self.prompt)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


HHPair = Pair


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


# --------------------------------------------------------------------------- TRL's standard formats

FIELDS = ("prompt", "chosen", "rejected", "completion", "messages")
ROLES = ("system", "user", "assistant", "tool")
TABLE_FILES = {".json": "json", ".parquet": "parquet", ".csv": "csv"}


def is_hh_source(source: str) -> bool:
    return source == "hub" or Path(source).is_dir()


def row_format(columns: list[str], where: str) -> str:
    """Which standard format a source's columns (already mapped) are in."""
    if "chosen" in columns and "rejected" in columns:
        return "preference" if "prompt" in columns else "implicit preference"
    if "messages" in columns:
        return "messages"
    if "prompt" in columns and "completion" in columns:
        return "prompt-completion"
    raise InputError(f"{where}: columns {sorted(columns)} are in none of TRL's standard formats: "
                     "prompt/chosen/rejected, chosen/rejected, prompt/completion or messages "
                     "(map other names with data.columns, e.g. {prompt: question, chosen: better})")


def _messages(value, name: str, where: str) -> Messages:
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise InputError(f"{where}: {name}[{i}] must be a message {{'role': {' | '.join(ROLES)}, "
                             f"'content': string}}, got {str(m)[:80]}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _field(row: dict, name: str, where: str) -> str | Messages:
    value = row.get(name)
    if value is None:
        raise InputError(f"{where}: missing field {name!r}")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(value, name, where)
    raise InputError(f"{where}: field {name!r} must be a string or a list of messages, got {type(value).__name__}")


def _ends_with_assistant(messages: Messages, name: str, where: str) -> None:
    if not messages or messages[-1]["role"] != "assistant":
        raise InputError(f"{where}: the {name} conversation does not end with the assistant")


def standard_row(row, fmt: str, where: str) -> tuple:
    """(prompt, chosen, rejected or None) of one row in a standard format (columns already mapped)."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if fmt == "implicit preference":
        chosen, rejected = _field(row, "chosen", where), _field(row, "rejected", where)
        if isinstance(chosen, str) and isinstance(rejected, str):
            if HUMAN not in "\n\n" + chosen.lstrip():
                raise InputError(f"{where}: chosen and rejected are plain text without a prompt field; they are split "
                                 "at their shared dialogue ending in '\\n\\nAssistant:' (HH-RLHF's form), which "
                                 "they lack: give a prompt column")
            return split_pair(chosen, rejected, where)
        if isinstance(chosen, list) and isinstance(rejected, list):
            from trl.data_utils import extract_prompt

            for name, side in (("chosen", chosen), ("rejected", rejected)):
                _ends_with_assistant(side, name, where)
            split = extract_prompt({"chosen": chosen, "rejected": rejected})
            prompt, chosen, rejected = split["prompt"], split["chosen"], split["rejected"]
        else:
            raise InputError(f"{where}: chosen and rejected must both be strings or both lists of messages")
    elif fmt == "messages":
        messages = _field(row, "messages", where)
        if not isinstance(messages, list):
            raise InputError(f"{where}: field 'messages' must be a list of messages")
        _ends_with_assistant(messages, "messages", where)
        prompt, chosen, rejected = messages[:-1], messages[-1:], None
    else:
        second = "chosen" if fmt == "preference" else "completion"
        prompt, chosen = _field(row, "prompt", where), _field(row, second, where)
        rejected = _field(row, "rejected", where) if fmt == "preference" else None
        sides = [(second, chosen)] + ([("rejected", rejected)] if rejected is not None else [])
        if any(isinstance(v, list) != isinstance(prompt, list) for _, v in sides):
            raise InputError(f"{where}: fields must be all strings or all lists of messages")
        for name, side in sides if isinstance(prompt, list) else ():
            _ends_with_assistant(side, name, where)
    if isinstance(prompt, list) and not any(m["role"] == "user" for m in prompt):
        raise InputError(f"{where}: the prompt has no user turn")
    if isinstance(prompt, str) and not prompt.strip():
        raise InputError(f"{where}: the prompt is empty")
    return prompt, chosen, rejected


def dialogue_messages(dialogue: str) -> Messages:
    """An HH-RLHF dialogue ("\\n\\nHuman: ... \\n\\nAssistant:") as user/assistant messages."""
    return [{"role": "user" if t.role == "Human" else "assistant", "content": t.text} for t in parse_turns(dialogue)]


def hh_as_messages(pair: Pair) -> Pair:
    """An HH-RLHF pair as user/assistant messages, the form TRL renders with a chat template."""
    prompt = dialogue_messages(pair.prompt)
    reply = lambda text: [{"role": "assistant", "content": text.strip()}]  # noqa: E731
    return Pair(pair.id, pair.subset, pair.split, pair.line, prompt, reply(pair.chosen), reply(pair.rejected))


def _mapped(row, columns: dict[str, str]):
    """A row with its columns renamed to the standard fields (a column named like a field that
    is mapped from elsewhere is dropped)."""
    if not isinstance(row, dict) or not columns:
        return row
    renamed = {column: name for name, column in columns.items()}
    return {renamed.get(k, k): v for k, v in row.items() if k in renamed or k not in columns}


def check_columns(columns: dict[str, str], present: list[str], where: str) -> None:
    unknown = [k for k in columns if k not in FIELDS]
    if unknown:
        raise InputError(f"data.columns: {unknown} are not standard fields ({', '.join(FIELDS)})")
    missing = [f"{k}: {v}" for k, v in columns.items() if v not in present]
    if missing:
        raise InputError(f"{where}: data.columns names columns it lacks ({', '.join(missing)}); "
                         f"its columns: {', '.join(present)}")


def _hub_dataset_folder(name: str, revision: str | None) -> Path:
    """The dataset repo's files at `revision`, from the hub or its local cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    what = f"hub dataset {name!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return Path(snapshot_download(name, repo_type="dataset", revision=revision))
    except HfHubHTTPError as e:
        raise InputError(f"the hub refused {what}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    except Exception as e:
        if not is_network_error(e) and type(e).__name__ != "LocalEntryNotFoundError":
            raise
        raise InputError(f"could not fetch {what} ({type(e).__name__}: {str(e).splitlines()[0]}); with no "
                         "network, give a local file as data.source") from None


def _table_rows(path_or_folder: str, builder: str | None, cfg: DataConfig, what: str):
    """(column names, rows) of a file or hub snapshot read through `datasets`."""
    import datasets

    try:
        if builder:
            ds = datasets.load_dataset(builder, data_files=path_or_folder, split="train")
        else:
            ds = datasets.load_dataset(path_or_folder, name=cfg.config, split=cfg.split)
    except Exception as e:  # any failure to read here is a problem with the data as given
        raise InputError(f"{what}: could not be read ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    return list(ds.column_names), iter(ds)


def load_standard(cfg: DataConfig) -> tuple[list[Pair], dict]:
    """Every row of a file or hub dataset in a standard format, in order, and what was read from where."""
    if cfg.source.startswith("hub:"):
        name = cfg.source.removeprefix("hub:")
        folder = _hub_dataset_folder(name, cfg.revision)
        label = f"{name}/{cfg.split}" + (f" ({cfg.config})" if cfg.config else "")
        columns, rows = _table_rows(str(folder), None, cfg, f"hub dataset {label}")
        numbered = enumerate(rows)
        info = {"source": cfg.source, "path": str(folder), "sha256": None, "revision": folder.name,
                "requested_revision": cfg.revision, "config": cfg.config}
        where, ident = (lambda i: f"hub dataset {label}, row {i}"), (lambda i: f"{name}/{cfg.split}#{i}")
    else:
        path = Path(cfg.source)
        if not path.is_file():
            raise InputError(f"data source {cfg.source!r} is not 'hub', 'hub:owner/name', a folder or a file")
        suffix = path.suffix if path.suffix != ".gz" else Path(path.stem).suffix
        info = {"source": cfg.source, "path": str(path), "sha256": sha256_file(path), "revision": None}
        if suffix == ".jsonl":
            lines = list(read_jsonl(path))
            first_row = next((r for _, r, e in lines if isinstance(r, dict)), {})
            columns = list(first_row)
            numbered = ((line, None if error else row, error) for line, row, error in lines)
            where, ident = (lambda i: f"{path}, line {i}"), (lambda i: f"{path.name}:{i}")
        elif suffix in TABLE_FILES:
            columns, rows = _table_rows(str(path), TABLE_FILES[suffix], cfg, str(path))
            numbered = enumerate(rows)
            where, ident = (lambda i: f"{path}, row {i}"), (lambda i: f"{path.name}#{i}")
        else:
            raise InputError(f"{path}: expected a .jsonl, .jsonl.gz, .json, .parquet or .csv file")
        label = path.name
    check_columns(cfg.columns, columns, info["path"])
    fmt = row_format(list(_mapped(dict.fromkeys(columns), cfg.columns)), info["path"])
    pairs, skipped = [], []
    for item in numbered:
        index, row, error = item if len(item) == 3 else (*item, None)
        try:
            if error:
                raise InputError(f"{where(index)}: {error}")
            prompt, chosen, rejected = standard_row(_mapped(row, cfg.columns), fmt, where(index))
            if pairs and isinstance(prompt, list) != pairs[0].conversational:
                raise InputError(f"{where(index)}: mixes plain-text and conversational rows "
                                 f"(the first row kept, {pairs[0].id}, is the other kind)")
        except InputError as e:
            if cfg.strict:
                raise
            skipped.append({"file": info["path"], "line": index, "reason": str(e).removeprefix(where(index) + ": ")})
            continue
        pairs.append(Pair(ident(index), label, cfg.split, index, prompt, chosen, rejected))
    return pairs, {"subset": label, "split": cfg.split, **info, "format": fmt, "rows": len(pairs), "skipped": skipped}


# --------------------------------------------------------------------------- loading

@dataclass
class LoadedData:
    pairs: list[Pair]
    summary: dict


def load_subset(source: str, subset: str, split: str, *, strict: bool = True,
                revision: str | None = None) -> tuple[list[Pair], dict]:
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
        pairs.append(Pair(f"{subset}/{split}/{line}", subset, split, line, prompt, chosen, rejected))
    info = {"subset": subset, "split": split, "source": source, "path": str(path),
            "sha256": sha256_file(path), "revision": revision, "rows": len(pairs), "skipped": skipped}
    return pairs, info


def text_of(value: str | Messages | None) -> str:
    """The words of a field, whichever form it takes."""
    if value is None or isinstance(value, str):
        return (value or "").strip()
    return "\n".join(m["content"] for m in value).strip()


def _prompt_key(prompt: str | Messages) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def apply_filters(pairs: list[Pair], cfg: DataConfig, seen_prompts: set[str]) -> tuple[list[Pair], dict]:
    counts = {"identical": 0, "empty_reply": 0, "duplicate_prompt": 0}
    kept = []
    for p in pairs:
        chosen, rejected = text_of(p.chosen), text_of(p.rejected)
        if cfg.drop_identical and p.rejected is not None and chosen == rejected:
            counts["identical"] += 1
        elif cfg.drop_empty and (not chosen or (p.rejected is not None and not rejected)):
            counts["empty_reply"] += 1
        elif cfg.drop_duplicate_prompts and _prompt_key(p.prompt) in seen_prompts:
            counts["duplicate_prompt"] += 1
        else:
            seen_prompts.add(_prompt_key(p.prompt))
            kept.append(p)
    return kept, counts


def load_pairs(cfg: DataConfig, excluded_prompts: set[str] | None = None) -> LoadedData:
    """The pairs `cfg` selects, with a summary of sources, skips and filters.

    `excluded_prompts` are dialogues that must not be trained on, typically the
    evaluation set's (either prompt format). A pair is left out when it opens with
    the same user turn as one of them, whatever the pair's format: HH-RLHF holds several
    branches of one conversation, and any of them would leak the evaluation prompt."""
    all_pairs, files, filtered = [], [], []
    seen: set[str] = set()
    excluded_count = 0
    excluded_prompts = set(excluded_prompts or ())
    for path in excluded_sources(cfg):
        excluded_prompts |= evalset_prompts(path)
    openings = {first_human_turn(p) for p in excluded_prompts}
    if is_hh_source(cfg.source):
        sources = [lambda subset=subset: load_subset(cfg.source, subset, cfg.split, strict=cfg.strict,
                                                     revision=cfg.revision) for subset in cfg.subsets]
    else:
        sources = [lambda: load_standard(cfg)]
    for load in sources:
        pairs, info = load()
        if openings:
            before = len(pairs)
            pairs = [p for p in pairs if not _shares_dialogue(p, openings)]
            excluded_count += before - len(pairs)
        pairs, counts = apply_filters(pairs, cfg, seen)
        if cfg.limit is not None:
            pairs = pairs[: cfg.limit]
        if cfg.as_messages and is_hh_source(cfg.source):
            pairs = [hh_as_messages(p) for p in pairs]
        files.append(info)
        filtered.append({"subset": info["subset"], **counts})
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
    if is_hh_source(cfg.source):
        d["source"] = [sha256_file(resolve_file(cfg.source, subset, cfg.split, cfg.revision))
                       for subset in cfg.subsets]
    elif cfg.source.startswith("hub:"):
        d["source"] = f"{cfg.source}@{_hub_dataset_folder(cfg.source.removeprefix('hub:'), cfg.revision).name}"
    else:
        d["source"] = sha256_file(cfg.source) if Path(cfg.source).is_file() else cfg.source
    d.pop("revision")  # the files' hashes (the hub dataset's commit) already say which revision they are
    for key in ("config", "columns", "as_messages"):  # added later: at their defaults, HH recipes hash as before
        if not d[key]:
            d.pop(key)
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


def first_human_turn(dialogue: str | Messages) -> str:
    """The opening user turn: HH-RLHF rows that start alike are branches of one conversation,
    and a conversational row that opens alike is the same question in another form."""
    if isinstance(dialogue, list):
        return next((m["content"].strip() for m in dialogue if m["role"] == "user"), "")
    turns = parse_turns(dialogue)
    return turns[0].text if turns else dialogue.strip()


def _shares_dialogue(pair: Pair, openings: set[str]) -> bool:
    return first_human_turn(pair.prompt) in openings


def summary_text(summary: dict) -> str:
    """A few human lines for the CLI."""
    lines = []
    for f, flt in zip(summary["files"], summary["filtered"]):
        drops = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in flt.items() if k != "subset" and v)
        name = f"{f['subset']}/{f['split']}" if "format" not in f else f"{f['subset']} ({f['format']})"
        lines.append(f"{name}: {f['rows']} pairs from {f['path']}"
                     + (f", skipped {len(f['skipped'])} bad rows" if f["skipped"] else "")
                     + (f", dropped {drops}" if drops else ""))
        for s in f["skipped"][:10]:
            lines.append(f"  skipped {'line' if f['path'].endswith(('.jsonl', '.gz')) else 'row'} {s['line']}: "
                         f"{s['reason']}")
        if len(f["skipped"]) > 10:
            lines.append(f"  ... and {len(f['skipped']) - 10} more (see the data summary)")
    if summary.get("excluded_for_evaluation"):
        lines.append(f"left out {summary['excluded_for_evaluation']} pairs that share a dialogue with the evaluation set")
    lines.append(f"total: {summary['pairs']} pairs")
    return "\n".join(lines)
