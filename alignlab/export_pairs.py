"""``run_generate(cfg)``: the plain function behind ``alignlab-generate``: preference pairs made by a model,
written as an offline dataset (JSONL or Parquet) that ``objective=dpo data.prompts.path=<file>`` trains on. Each row
records how it was produced.

* ``data=online`` (default): two answers per prompt from the **initial** model, labelled by the judge. With the
  prompts and annotator of an OAIF run, this is OAIF's offline baseline: the same feedback, gathered once before
  training instead of from the current policy at every step.
* ``data=counterfactual``: the counterfactual pairs of a behaviour and variant (the same cache as training).

Each pair source says how its pairs become rows (:meth:`alignlab.data.base.PairSource.export_rows`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from alignlab.errors import ConfigError
from alignlab.redaction import without_secrets


def write_rows(rows: list[dict[str, Any]], output: Path) -> None:
    """Write ``rows`` whole or not at all: a partial file under the final name would pass for a finished export
    (a resumed experiment skips an export whose file exists)."""
    if output.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"output={str(output)!r}: write .jsonl or .parquet")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    if output.suffix == ".jsonl":
        with partial.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(partial)
    partial.replace(output)


def run_generate(cfg: DictConfig) -> tuple[dict[str, float], Path]:
    """Export the configured pair source's pairs of ``split`` to ``output``; returns the counts and the path."""
    output = Path(cfg.output)
    if output.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"output={cfg.output!r}: write .jsonl or .parquet")
    pl.seed_everything(cfg.seed)
    loaded = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, _partial_=True)(tokenizer=loaded.tokenizer)
    rows, totals = datamodule.export_rows(loaded.model, cfg.split)
    provenance = {"model": loaded.name, "judge": without_secrets(cfg.judge) if "judge" in cfg.data else None,
                  "seed": cfg.seed}
    for row in rows:
        if "produced_by" in row:  # the source's own account (sampling settings), with the run's around it
            row["produced_by"] = json.dumps({**provenance, **row["produced_by"]})
    write_rows(rows, output)
    print("pairs: " + ", ".join(f"{k} {v:g}" for k, v in totals.items()))
    print(f"wrote {len(rows)} pairs to {output}")
    return totals, output
