"""A training run checks its own split before the first epoch: the same file or the same bytes in two splits,
or one file under two labels, would make its test figures a measure of memory, not of the model."""
from __future__ import annotations

from typing import Callable

import pandas as pd


def find_leaks(frame: pd.DataFrame, content_hash: Callable[[str], str | None]) -> list[str]:
    """One line per problem, naming the files; `content_hash` gives a file's hash (None when unknown)."""
    problems = []
    for path, group in frame.groupby("path", sort=True):
        if group["label"].nunique() > 1:
            problems.append(f"{path}: listed with two labels ({', '.join(sorted(group['label'].unique()))})")
        if group["split"].nunique() > 1:
            problems.append(f"{path}: listed in {' and '.join(sorted(group['split'].unique()))}")
    hashed = frame.assign(_hash=frame["path"].map(content_hash)).dropna(subset=["_hash"])
    for _, group in hashed.groupby("_hash", sort=False):
        files = group.drop_duplicates("path")
        if len(files) < 2:
            continue
        places = " = ".join(f"{row.path} ({row.split}, {row.label})" for row in files.itertuples())
        if files["split"].nunique() > 1:
            problems.append(f"identical content across splits: {places}")
        elif files["label"].nunique() > 1:
            problems.append(f"identical content with two labels: {places}")
    return problems
