"""XSTest's prompts (Röttger et al., NAACL 2024): 250 safe prompts that only look unsafe and
200 unsafe contrasts, read from the official `xstest_prompts.csv` (a local copy, or the hub
dataset Paul/XSTest)."""

from __future__ import annotations

from pathlib import Path

from alignscope.io import InputError, read_csv_rows, sha256_file

HUB_XSTEST = "Paul/XSTest"
XSTEST_FILE = "xstest_prompts.csv"
XSTEST_COLUMNS = ("id", "prompt", "type", "label")
XSTEST_CATEGORIES = ("safe", "unsafe")


def xstest_path(source: str, revision: str | None = None) -> Path:
    if source == "hub":
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return Path(hf_hub_download(HUB_XSTEST, XSTEST_FILE, repo_type="dataset", revision=revision))
        except HfHubHTTPError as e:
            raise InputError(f"the hub refused {HUB_XSTEST}/{XSTEST_FILE}: {str(e).splitlines()[0]}") from None
        except OSError as e:
            raise InputError(f"could not fetch {HUB_XSTEST}/{XSTEST_FILE} from the hub ({type(e).__name__}); "
                             "with no network, give a local copy as the suite's source") from None
    path = Path(source)
    path = path / XSTEST_FILE if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{source}: no {XSTEST_FILE} there (expected XSTest's prompt file or its folder)")
    return path


def read_xstest(source: str, revision: str | None = None) -> tuple[list[dict], dict]:
    path = xstest_path(source, revision)
    rows = []
    for line, row in read_csv_rows(path, XSTEST_COLUMNS, f"XSTest's prompt file has {', '.join(XSTEST_COLUMNS)}"):
        if row["label"] not in XSTEST_CATEGORIES:
            raise InputError(f"{path}: line {line}: label {row['label']!r}; expected safe or unsafe")
        if not (row["prompt"] or "").strip():
            raise InputError(f"{path}: line {line}: empty prompt")
        rows.append({"id": f"xstest-{row['id']}", "text": row["prompt"], "category": row["label"],
                     "type": row["type"], "_order": len(rows)})
    if not rows:
        raise InputError(f"{path}: no prompts")
    return rows, {"source": source, "path": str(path), "sha256": sha256_file(path), "revision": revision,
                  "rows": len(rows)}
