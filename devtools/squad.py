"""SQuAD v1.1 sample rows for tests, demos and benchmarks."""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV_VAR = "QA_SQUAD_PATH"


def default_squad_path() -> Path:
    """``../shared/data/squad-v1.1-dev-sample.json`` next to the repository, or $QA_SQUAD_PATH."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    repo = Path(__file__).resolve().parents[1]
    return repo.parent / "shared" / "data" / "squad-v1.1-dev-sample.json"


def load_articles(path: Path | None = None) -> list[dict]:
    """The sample's ``data`` list: articles with ``title`` and ``paragraphs``.

    Raises:
        FileNotFoundError: with the path looked at and how to point elsewhere.
    """
    path = path or default_squad_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"SQuAD sample not found at {path}; it ships in the shared data folder beside the "
            f"repository (../shared/data/). Set {ENV_VAR} to its location.")
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)["data"]


def squad_rows(limit: int | None = None, path: Path | None = None) -> list[dict[str, str]]:
    """``{"id", "question", "context", "answer"}`` dicts in file order.

    Raises:
        FileNotFoundError: with the path looked at and how to point elsewhere.
    """
    rows = []
    for article in load_articles(path):
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append({"id": qa["id"], "question": qa["question"], "context": paragraph["context"],
                             "answer": qa["answers"][0]["text"] if qa["answers"] else ""})
                if limit is not None and len(rows) >= limit:
                    return rows
    return rows


def squad_contexts(path: Path | None = None) -> list[str]:
    """Distinct paragraphs, for training a tokenizer."""
    seen: dict[str, None] = {}
    for row in squad_rows(path=path):
        seen.setdefault(row["context"], None)
    return list(seen)
