"""Multirun bookkeeping: one record per job in ``<sweep dir>/sweep_summary.json``, one sweep per sweep folder,
DDP ranks that run their job rather than the sweep, and Optuna study helpers.

Hydra's sweepers run every job of a batch even when one fails, but they report the failure only by raising at
the end, and ``on_multirun_end`` is then never called. So :class:`SweepSummary` rewrites the summary after each
job (``on_job_end`` runs in the job's own process, also under the submitit launcher), and the file is complete
however the sweep ends.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from alignlab.errors import AlignlabError, ConfigError
from alignlab.redaction import SECRET_KEYS, override_without_secret, without_secrets

log = logging.getLogger(__name__)
SUMMARY = "sweep_summary.json"
JOBS_DIR = ".jobs"  # one record per job; the summary is rebuilt from them


class JobError(AlignlabError, CompactHydraException):
    """A user error in one job of a multirun: recorded for that job, and reported by Hydra in one line."""


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> list[str]:
    """The overrides that tell this job from the others (empty outside Hydra)."""
    if not HydraConfig.initialized():
        return []
    return [override_without_secret(o) for o in HydraConfig.get().overrides.task]


def group_choices() -> dict[str, str]:
    """Config-group choices of this job (``{"loss": "ipo", "model": "smollm2", ...}``); empty outside Hydra."""
    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if isinstance(v, str)
            and not k.startswith("hydra/")}


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


@contextmanager
def _locked(path: Path):
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _error_text(error: BaseException) -> str:
    """``Type: message`` of the error's root cause, on one line."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    return f"{type(root).__name__}: {' '.join(str(error if isinstance(error, JobError) else root).split())}"


def job_record(config: DictConfig, job_return: JobReturn) -> dict[str, Any]:
    """What the summary says of one job: overrides, status, error, run folder and final metrics."""
    run_dir = Path(config.hydra.runtime.output_dir)  # the job's folder; paths.output_dir is the sweep's root
    overrides = [override_without_secret(o) for o in config.hydra.overrides.task]
    record: dict[str, Any] = {"num": int(config.hydra.job.num), "overrides": overrides,
                              "run_dir": str(run_dir)}
    if job_return.status == JobStatus.COMPLETED:
        record["status"] = "completed"
        value = job_return.return_value
        record["objective_value"] = value if isinstance(value, (int, float)) and math.isfinite(value) else None
    else:
        error = job_return._return_value  # the exception; reading .return_value would raise it
        record["status"] = "failed"
        record["error"] = _error_text(error) if isinstance(error, BaseException) else str(error)
        if isinstance(error, BaseException):
            (run_dir / "error.txt").parent.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text("".join(traceback.format_exception(error)))
    summary = run_dir / "summary.json"
    record["metrics"] = json.loads(summary.read_text()).get("metrics", {}) if summary.is_file() else {}
    return record


def rebuild_summary(sweep_dir: Path) -> dict[str, Any]:
    """Merge the per-job records of ``sweep_dir`` into ``sweep_summary.json``; returns the summary."""
    records = []
    for path in sorted((sweep_dir / JOBS_DIR).glob("*.json"), key=lambda p: int(p.stem)):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:  # a record being replaced right now is read next time
            log.warning("sweep summary: skipping %s (%s)", path, e)
    counts = {status: sum(r["status"] == status for r in records) for status in ("completed", "failed")}
    summary = {"sweep_dir": str(sweep_dir), "jobs": len(records), **counts, "records": records}
    write_json_atomic(sweep_dir / SUMMARY, summary)
    return summary


def scrub_multirun_yaml(sweep_dir: Path) -> None:
    """Hydra's own ``multirun.yaml`` copies the command line: API keys given there are set to null in it."""
    path = sweep_dir / "multirun.yaml"
    if path.is_file() and any(key in path.read_text() for key in SECRET_KEYS):
        with _locked(sweep_dir / ".summary.lock"):
            OmegaConf.save(OmegaConf.create(without_secrets(OmegaConf.load(path), resolve=False)), path)


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks`` in ``conf/hydra/default.yaml``) keeping ``sweep_summary.json`` current,
    and secrets out of Hydra's ``multirun.yaml``; it refuses a sweep folder that is taken."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep_dir(config)
        except ConfigError as e:
            # Hydra turns a callback's exception into a warning and runs the sweep anyway: end it here, before
            # any job and before the sweeper writes into the folder, as the CLI ends on any user error.
            print(f"alignlab: error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            scrub_multirun_yaml(Path(config.hydra.sweep.dir))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        (sweep_dir / JOBS_DIR).mkdir(parents=True, exist_ok=True)
        record = job_record(config, job_return)
        write_json_atomic(sweep_dir / JOBS_DIR / f"{record['num']}.json", record)
        with _locked(sweep_dir / ".summary.lock"):
            summary = rebuild_summary(sweep_dir)
        if record["status"] == "failed":
            log.error("job %d (%s) failed: %s; the sweep goes on", record["num"], " ".join(record["overrides"]),
                      record["error"])
        log.info("sweep: %d completed, %d failed so far; %s", summary["completed"], summary["failed"],
                 sweep_dir / SUMMARY)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if (sweep_dir / JOBS_DIR).is_dir():
            summary = rebuild_summary(sweep_dir)
            print(f"sweep done: {summary['completed']} completed, {summary['failed']} failed; "
                  f"summary: {sweep_dir / SUMMARY}")


def check_sweep_dir(config: DictConfig) -> None:
    """Before any job: a sweep writes into a folder of its own. ``paths.output_dir`` given to a multirun is its root
    (``conf/hydra/default.yaml``), so a sweep config that sets another ``hydra.sweep.dir`` would scatter it."""
    from alignlab.run_dir import results_in

    sweep_dir = Path(str(config.hydra.sweep.dir))
    output_dir = config.get("paths", {}).get("output_dir")
    if output_dir is not None and Path(output_dir).resolve() != sweep_dir.resolve():
        raise ConfigError(f"paths.output_dir={output_dir} is a multirun's root, but hydra.sweep.dir={sweep_dir}: "
                          "give one of them")
    taken = [name for name in ("multirun.yaml", SUMMARY, JOBS_DIR) if (sweep_dir / name).exists()]
    taken += results_in(sweep_dir)
    if taken:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} already holds another sweep or run ({', '.join(taken)}); "
                          "choose a new paths.output_dir")


# --- DDP under a multirun: every rank runs the job its rank 0 runs ----------------------------------------------

HYDRA_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def config_flags(argv: list[str]) -> list[str]:
    """The ``--config-path/-name/-dir`` flags of a command line, with their values: what composes the config."""
    kept, args = [], iter(argv)
    for arg in args:
        if arg in HYDRA_FLAGS:
            kept += [arg, next(args, "")]
        elif arg.split("=", 1)[0] in HYDRA_FLAGS:
            kept.append(arg)
    return kept


def quoted(value: str) -> str:
    """A Hydra override value that stays one string whatever it holds (``=`` and ``,`` are in job folder names)."""
    return "'" + value.replace("'", "\\'") + "'"


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def single_run_command(argv: list[str], hydra_cfg: DictConfig) -> list[str]:
    """``argv`` for one job of a multirun run alone: its overrides, its folder, ``hydra.mode=RUN``, never ``-m``.

    The job folder goes in ``paths.output_dir`` explicitly: a sweep root given there, or set by a config file, must
    not become the job's folder in the rerun."""
    job_dir = str(hydra_cfg.runtime.output_dir)
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if override_key(o) != "hydra.mode"]
    task = [o for o in hydra_cfg.overrides.task if override_key(o) != "paths.output_dir"]
    return [argv[0], *config_flags(argv[1:]), *hydra_overrides, *task, f"paths.output_dir={quoted(job_dir)}",
            "hydra.mode=RUN"]


DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ddp_ranks_run_this_job() -> Iterator[None]:
    """Within a multirun job: ranks 1.. that Lightning's DDP subprocess launcher starts run this job, not the sweep.

    That launcher reruns ``sys.argv`` (``-m`` included) with ``hydra.run.dir=<HydraConfig run.dir>`` appended, so
    each rank > 0 would run a whole sweep of its own (and under Optuna sample its own trials). Here ``sys.argv`` is
    this job alone and the run folder is this job's, so ranks 1.. rerun exactly the job rank 0 runs, in its folder.
    After the job, the next job must launch its own ranks: the launcher's environment variables are restored and
    the process group that this job's ranks shared is closed. Under an external launcher (torchrun, SLURM: every
    rank runs the same sweep) both stay as they were. Hydra sets a fresh HydraConfig for each job."""
    if not in_multirun():
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, env = list(sys.argv), {key: os.environ.get(key) for key in DDP_ENV}
    sys.argv = single_run_command(argv, hydra_cfg)
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = str(hydra_cfg.runtime.output_dir)
    try:
        yield
    finally:
        sys.argv = argv
        if env["LOCAL_RANK"] is None:  # ranks were launched here, not by torchrun or SLURM
            close_process_group()
            restore_environment(env)


def restore_environment(env: dict[str, str | None]) -> None:
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- Optuna: a study in SQLite that a relaunch resumes --------------------------------------------------------

def sqlite_url(path: str) -> str:
    """``sqlite:///<absolute path>``, creating the folder (SQLite does not)."""
    file = Path(path).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def _trial_states(storage: str, study_name: str) -> list:
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return []
    return [trial.state for trial in study.get_trials(deepcopy=False)]


def trials_left(storage: str, study_name: str, total: int) -> int:
    """Trials still to run for a study of ``total`` finished trials, so relaunching an interrupted search resumes
    it instead of starting ``total`` more. A trial a killed launch left RUNNING does not count: it is run again."""
    import optuna

    finished = _trial_states(storage, study_name).count(optuna.trial.TrialState.COMPLETE)
    return max(0, int(total) - finished)


def sampler_seed(storage: str, study_name: str, seed: int) -> int:
    """``seed`` plus the trials the study already holds: a relaunch must not replay the first launch's draws
    (a seeded sampler would propose the same parameters again), yet stays reproducible from the study."""
    return int(seed) + len(_trial_states(storage, study_name))
