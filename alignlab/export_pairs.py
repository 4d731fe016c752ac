"""``run_generate(cfg)``: the plain function behind ``alignlab-generate``: preference pairs made by a model,
written as an offline dataset (JSONL or Parquet) that ``objective=dpo data.path=<file>`` trains on. Each row
records how it was produced.

* ``data=online`` (default): two answers per prompt from the **initial** model, labelled by the judge. With the
  prompts and annotator of an OAIF run, this is OAIF's offline baseline: the same feedback, gathered once before
  training instead of from the current policy at every step.
* ``data=counterfactual``: the counterfactual pairs of a behaviour and variant (the same cache as training).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from alignlab.errors import ConfigError
from alignlab.redaction import without_secrets

log = logging.getLogger(__name__)


def write_rows(rows: list[dict[str, Any]], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".jsonl":
        with output.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    elif output.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(output)
    else:
        raise ConfigError(f"output={str(output)!r}: write .jsonl or .parquet")


def run_generate(cfg: DictConfig) -> tuple[dict[str, float], Path]:
    output = Path(cfg.output)
    if output.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"output={cfg.output!r}: write .jsonl or .parquet")
    pl.seed_everything(cfg.seed)
    loaded = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, _partial_=True)(tokenizer=loaded.tokenizer)
    if hasattr(datamodule, "generator_model"):  # counterfactual pairs: generated (or read from cache) in setup
        datamodule.generator_model = loaded.model
        datamodule.setup("fit")
        rows = [r for r in datamodule.rows if cfg.split == "all" or r["split"] == cfg.split]
        write_rows(rows, output)
        print(f"wrote {len(rows)} counterfactual pairs ({datamodule.behavior.name}, {datamodule.variant}) to {output}")
        return {"pairs": float(len(rows))}, output
    datamodule.setup("fit")
    prompts = {"train": datamodule.train_prompts, "val": datamodule.val_prompts,
               "all": datamodule.train_prompts + datamodule.val_prompts}.get(cfg.split)
    if prompts is None:
        raise ConfigError(f"split={cfg.split!r} is not one of train, val, all")
    produced_by = {"model": loaded.name, "judge": without_secrets(cfg.judge),
                   "temperature": datamodule.temperature, "top_p": datamodule.top_p,
                   "max_new_tokens": datamodule.max_new_tokens, "unfinished": datamodule.unfinished,
                   "seed": cfg.seed}
    rows, totals = [], {}
    for start in tqdm(range(0, len(prompts), datamodule.batch_size), desc="sampling and judging pairs",
                      unit="batch", disable=None):
        batch = datamodule._collate(prompts[start: start + datamodule.batch_size])
        labelled, stats = datamodule.label(loaded.model, batch)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value
        for pair in labelled:
            # The prompt row's other columns travel along (e.g. a reference answer), but never as the pair itself.
            meta = {k: v for k, v in pair.meta.items() if k not in ("prompt", "chosen", "rejected")}
            rows.append({**meta, "prompt": pair.meta.get("prompt", pair.question), "chosen": pair.chosen.text,
                         "rejected": pair.rejected.text, "judge_confidence": pair.confidence,
                         "chosen_finished": pair.chosen.finished, "rejected_finished": pair.rejected.finished,
                         "produced_by": json.dumps(produced_by)})
        log.info("%d / %d prompts, %d pairs kept", min(start + datamodule.batch_size, len(prompts)), len(prompts),
                 len(rows))
    write_rows(rows, output)
    batches = -(-len(prompts) // datamodule.batch_size)
    for key in ("mean_length", "position_consistency"):  # per-batch means, not counts
        if key in totals:
            totals[key] /= batches
    print("pairs: " + ", ".join(f"{k} {v:g}" for k, v in totals.items()))
    print(f"wrote {len(rows)} pairs to {output}")
    return totals, output
