"""What ``python train.py`` does, given a composed config: build, fit, fuse, test, summarize."""

from __future__ import annotations

import copy
import logging
import os
import shlex
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar, WeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from .artifact import atomic_write_json, update_fused_metrics
from .blocks import FormMismatchError
from .callbacks import FINAL_WEIGHTS, ReparameterizeCallback, SpeedMonitor, pruned_at_epoch
from .checkpoint import net_state, read_checkpoint
from .ema import EMAWeights
from .errors import Interrupted, Preempted, Stopped, UserError, reraise_as_user_error
from .launching import is_submitit_requeue, slurm_job, slurm_restarts, use_cores_given
from .loggers import ResumePoint
from .models import complete_spec, load_pretrained
from .module import RUN_OVERRIDES_KEY, ClassifierModule
from .run_summary import SUMMARY_FILE, SUMMARY_METRICS, TrainSummary

__all__ = ["train", "build_components", "instantiate_group", "optimized_metric", "SUMMARY_FILE", "SUMMARY_METRICS"]

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every ``_target_`` node of a config group such as ``logger`` or ``callbacks``, instantiated."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def build_components(cfg: DictConfig) -> tuple[L.LightningDataModule, ClassifierModule, L.Trainer]:
    """Datamodule, module and trainer from a composed train config (no fitting)."""
    with reraise_as_user_error("data config", ValueError, TypeError):
        datamodule = instantiate(cfg.data)
    # mapping nodes give dicts
    model_spec = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
    module_options = cast(dict[str, Any], OmegaConf.to_container(cfg.module, resolve=True))
    with reraise_as_user_error("model config", ValueError, TypeError):
        model_spec = _spec_for_data(model_spec, datamodule)
        module = ClassifierModule(
            model_spec=model_spec,
            optimizer=instantiate(cfg.optimizer) if cfg.get("optimizer") else None,
            scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            **module_options,
        )
    load_pretrained(module.net, model_spec)  # once, before training; rebuilds from checkpoints never read it again
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    if cfg.get("hparams_search") is not None:  # a trial of a search: report every epoch, stop when pruned
        from .search import trial_pruning

        callbacks += [c for c in [trial_pruning(cfg)] if c is not None]
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    with reraise_as_user_error("trainer config", ValueError, TypeError):
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def _spec_for_data(model_spec: dict[str, Any], datamodule: Any) -> dict[str, Any]:
    """The model spec completed from the data (class count, input size, stride plan), when the datamodule says
    (any LightningDataModule may be configured; ours have ``input_size`` and ``num_classes``)."""
    if not hasattr(datamodule, "input_size"):
        return model_spec
    spec = complete_spec(model_spec, lambda: datamodule.num_classes, datamodule.input_size)
    if tuple(spec["input_size"][1:]) != tuple(datamodule.input_size):
        raise UserError(
            f"model.input_size={spec['input_size']} but the data gives {list(datamodule.input_size)} "
            "images; leave model.input_size=null (it follows the data), or set data.image_size"
        )
    return spec


def _last_checkpoint(run_dir: Path) -> Path:
    """Where a run's ModelCheckpoint keeps ``last.ckpt`` (configs/callbacks/model_checkpoint.yaml)."""
    return run_dir / "checkpoints" / "last.ckpt"


def _resume_checkpoint(cfg: DictConfig, module: ClassifierModule) -> tuple[str | None, ResumePoint | None]:
    """The checkpoint to resume from (``ckpt_path``, or the run's ``last.ckpt`` with ``auto_resume``), checked to be
    readable, safe and of this run's network before Lightning touches it; and where it resumes.

    ``auto_resume=null`` (the default) resumes only a job that SLURM restarted (requeued after preemption or its time
    limit: the same command in the same run directory, so its ``last.ckpt`` is this run's own), from that
    ``last.ckpt`` even when the job began from a ``ckpt_path``; ``false`` never resumes by itself.
    """
    given = cfg.get("ckpt_path")
    auto_resume = cfg.get("auto_resume")
    restarts = slurm_restarts()
    path = given
    if restarts and auto_resume is not False:  # a requeued job continues where it stopped
        last = _last_checkpoint(Path(cfg.paths.output_dir))
        if last.is_file():
            path = str(last)
            began = f"; it began from ckpt_path={given}" if given is not None else ""
            log.warning(
                f"SLURM restarted this job (restart {restarts}): resuming from {last}{began} "
                "(auto_resume=false would start it over)"
            )
        elif given is None:  # e.g. a timestamped run directory: the restarted job got a new one
            log.warning(
                f"SLURM restarted this job (restart {restarts}) but {last} does not exist: training starts over. "
                "Give the job a fixed hydra.run.dir=... so that a requeued job finds its checkpoints"
            )
    elif given is None and auto_resume:
        last = _last_checkpoint(Path(cfg.paths.output_dir))
        path = str(last) if last.is_file() else None
    if path is None:
        return None, None
    if Path(path).is_dir():
        last = _last_checkpoint(Path(path))
        resume = (
            f"ckpt_path={last}, or continue that run in its own directory: auto_resume=true hydra.run.dir={path}"
            if last.is_file()
            else "ckpt_path=<run>/checkpoints/last.ckpt (this folder holds no checkpoints/last.ckpt)"
        )
        raise UserError(f"ckpt_path={path} is a folder, not a checkpoint file; resume with {resume}")
    if not Path(path).is_file():
        raise UserError(
            f"ckpt_path={path} does not exist; point it at a checkpoint such as <run>/checkpoints/last.ckpt"
        )
    ckpt = read_checkpoint(Path(path))  # refuses unsafe, corrupt or foreign files with one clear line
    try:
        copy.deepcopy(module.net).load_state_dict(net_state(ckpt), strict=True)
    except (RuntimeError, FormMismatchError) as err:
        detail = next(
            (
                line.strip()
                for line in str(err).splitlines()
                if "size mismatch" in line or "Missing" in line or "Unexpected" in line
            ),
            str(err).splitlines()[0],
        )
        if len(detail) > 200:  # a long key list: cut at a key, not inside one
            detail = detail[:200].rsplit(", ", 1)[0] + ", ..."
        recorded = ckpt.get(RUN_OVERRIDES_KEY)
        settings = (
            "the settings it was trained with: python train.py "
            + " ".join(shlex.quote(o) for o in [*recorded, f"ckpt_path={path}"])
            if isinstance(recorded, list)
            else "the model/data settings of the run that wrote it (its .hydra/overrides.yaml)"
        )
        raise UserError(
            f"ckpt_path={path} holds another network than this config builds ({detail}); resume with {settings}, "
            "or drop ckpt_path to start anew"
        ) from err
    return str(path), ResumePoint(int(ckpt.get("epoch") or 0), int(ckpt.get("global_step") or 0))


def train(cfg: DictConfig) -> TrainSummary:
    """Fit, fuse (through ReparameterizeCallback), test; return what was produced.

    ``summary.json`` is written as soon as there is something to record (after fit) and again after testing, so a
    run stopped during the test phase still describes its fused model. Ctrl-C and SIGTERM end in :class:`Interrupted`
    / :class:`Preempted` (exit 130 / 143) naming the command that resumes.
    """
    started = time.perf_counter()
    _check_optimized_metric(cfg)  # before hours of training, not after
    threads = use_cores_given()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build_components(cfg)
    module.run_overrides = [o for o in _command_overrides() if not o.startswith(_PLACEMENT)]
    resume_path, resume_point = _resume_checkpoint(cfg, module)
    for logger in trainer.loggers:  # a resumed run continues its metrics files instead of replacing them
        if resume_point is not None and hasattr(logger, "resume_at"):
            logger.resume_at(resume_point)
    if trainer.loggers:  # the whole resolved config, not only the module's hyperparameters
        config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))  # a mapping node gives a dict
        config.pop("hydra", None)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
    run_dir = Path(cfg.paths.output_dir)
    resumes = cfg.get("auto_resume") is not False  # on a SLURM restart (see _resume_checkpoint)
    try:
        with _stops_cleanly(trainer, run_dir, "training", "no fused model was written", resumes_when_restarted=resumes):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path)
    except Exception as err:
        _record_unfinished_fit(trainer, run_dir, err, threads, resume_path, time.perf_counter() - started)
        raise

    summary = _fit_summary(trainer, run_dir)
    _record_averaging(trainer, summary)
    summary.cpu_threads = threads
    summary.resumed_from = resume_path
    summary.total_time_s = time.perf_counter() - started
    _write_summary(trainer, run_dir, summary)
    if cfg.get("test") and summary.status != "pruned":  # a pruned trial is not worth its test pass
        best = summary.best_checkpoint
        stopped = f"the fused model is in {summary.fused_dir}; its test accuracy was not measured"
        with _stops_cleanly(trainer, run_dir, "the test phase", stopped, summary):
            # by its path: ckpt_path="best" warns that the run has two ModelCheckpoint callbacks (best, last)
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        summary.test_acc = float(results[0]["test/acc"]) if results else None
        summary.test_images = _image_count(results[0], "test/images") if results else None
        summary.tested_weights = best or FINAL_WEIGHTS  # fast_dev_run saves no checkpoint: the final weights
        if trainer.is_global_zero and summary.fused_dir and summary.fused_weights == summary.tested_weights:
            # the fused model holds exactly the weights just tested: record their test accuracy with it
            update_fused_metrics(summary.fused_dir, {"test_acc": summary.test_acc, "test_images": summary.test_images})
    summary.total_time_s = time.perf_counter() - started
    _write_summary(trainer, run_dir, summary)
    _close_loggers(trainer)
    return summary


def _image_count(metrics: Mapping[str, Any], name: str) -> int | None:
    """An ``<stage>/images`` count the module logged (None where that stage did not run)."""
    value = metrics.get(name)
    return None if value is None else int(round(float(value)))


def trainer_callbacks(trainer: L.Trainer) -> list[Callback]:
    """``trainer.callbacks``, which Lightning's callback connector sets without the Trainer declaring it."""
    return trainer.callbacks  # type: ignore[attr-defined]  # set in CallbackConnector.on_trainer_init


def _fit_summary(trainer: L.Trainer, run_dir: Path) -> TrainSummary:
    checkpoint = trainer.checkpoint_callback
    dirpath = checkpoint.dirpath if isinstance(checkpoint, ModelCheckpoint) else None
    last = Path(dirpath) / "last.ckpt" if dirpath else None
    best_score = getattr(checkpoint, "best_model_score", None)
    summary = TrainSummary(
        status="pruned" if pruned_at_epoch(trainer) is not None else "completed",
        run_dir=str(run_dir),
        epochs=trainer.current_epoch,
        best_val_acc=float(best_score) if best_score is not None else None,
        best_checkpoint=getattr(checkpoint, "best_model_path", "") or None,
        last_checkpoint=str(last) if last is not None and last.is_file() else None,
    )
    datamodule = getattr(trainer, "datamodule", None)  # Lightning sets it without declaring it
    summary.skipped_images = len(getattr(datamodule, "skipped", ())) or None
    summary.test_split = getattr(datamodule, "test_split_note", None)
    summary.val_images = _image_count(trainer.callback_metrics, "val/images")
    speed = next((c for c in trainer_callbacks(trainer) if isinstance(c, SpeedMonitor)), None)
    if speed is not None:
        summary.train_images_per_s, summary.train_time_s = speed.train_images_per_s, speed.train_time_s
        summary.time_to_best_s = speed.time_to_best_s
    fuser = next((c for c in trainer_callbacks(trainer) if isinstance(c, ReparameterizeCallback)), None)
    if fuser is not None and fuser.result is not None:
        summary.fused_dir, summary.fused_weights = fuser.result.path, fuser.result.source
        summary.fusion_fp32_max_abs_diff = fuser.result.float32.max_abs_diff
        summary.fusion_fp64_max_abs_diff = fuser.result.float64.max_abs_diff
        summary.fusion_argmax_agreement = fuser.result.float32.argmax_agreement
        summary.fusion_fp32_max_rel_diff = fuser.result.float32.max_rel_diff
        summary.fusion_fp64_max_rel_diff = fuser.result.float64.max_rel_diff
    return summary


def _record_unfinished_fit(
    trainer: L.Trainer, run_dir: Path, err: Exception, threads: int, resume_path: str | None, elapsed_s: float
) -> None:
    """``summary.json`` for a run whose training ended early: ``interrupted`` (Ctrl-C, SIGTERM) or ``failed`` (it
    diverged, a file went bad, a bug), the error line, and what it got to (epochs, best and last checkpoints), so that
    a script reading the run, or a person, learns what happened where only the console said it before."""
    from .guard import CONSOLE_CLOSED, console_lost, find_user_error, one_line

    user_error = find_user_error(err)
    status = "interrupted" if isinstance(user_error, Stopped) or console_lost(err) else "failed"
    if console_lost(err):  # ends as SIGPIPE would (guard): checkpoints allow resuming
        error = CONSOLE_CLOSED
    else:
        error = one_line(user_error) if user_error is not None else f"{type(err).__name__}: {one_line(err)}"
    try:
        summary = _fit_summary(trainer, run_dir)
    except Exception:  # noqa: BLE001 - the record must never hide the error that ended the run
        summary = TrainSummary(status, str(run_dir))
    summary.status, summary.error = status, error
    summary.cpu_threads, summary.resumed_from, summary.total_time_s = threads, resume_path, elapsed_s
    try:
        _write_summary(trainer, run_dir, summary)
    except OSError:  # a full disk, say: the error line is what matters
        pass


def _record_averaging(trainer: L.Trainer, summary: TrainSummary) -> None:
    """What a weight-averaging callback (callbacks=ema) did: which weights the shipped checkpoint holds, and the raw
    and averaged weights' validation accuracy there (from the checkpoint itself: a resumed run may ship an older
    one)."""
    averaging = next((c for c in trainer_callbacks(trainer) if isinstance(c, WeightAveraging)), None)
    if averaging is None:
        return
    decay = getattr(averaging, "decay", None)
    summary.averaged_weights = ("EMA" if decay is not None else type(averaging).__name__) + (
        f" (decay {decay})" if decay else ""
    )
    if isinstance(averaging, EMAWeights) and averaging.current_decay() < averaging.decay:  # still warming up
        summary.averaged_weights = (
            f"EMA (decay {averaging.decay}, warming up: {averaging.current_decay():.3g} at the last of "
            f"{averaging.updates} updates)"
        )
    record = None
    if summary.best_checkpoint and Path(summary.best_checkpoint).is_file():
        record = read_checkpoint(Path(summary.best_checkpoint)).get("weight_averaging")
    elif isinstance(averaging, EMAWeights) and averaging.comparison is not None:  # no checkpoint: the final weights
        record = averaging.comparison.to_dict()
    if record:
        summary.shipped_weights = record["shipped"]
        summary.val_acc_raw, summary.val_acc_averaged = record["val_acc_raw"], record["val_acc_averaged"]
    else:
        summary.shipped_weights = "averaged"  # Lightning's own averaging callbacks ship the average


def _write_summary(trainer: L.Trainer, run_dir: Path, summary: TrainSummary) -> None:
    if trainer.is_global_zero:  # what a sweep summary (reparam.sweep) and other tools read back
        atomic_write_json(run_dir / SUMMARY_FILE, summary.to_dict())


@contextmanager
def _stops_cleanly(
    trainer: L.Trainer,
    run_dir: Path,
    phase: str,
    consequence: str,
    summary: TrainSummary | None = None,
    resumes_when_restarted: bool = True,
) -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM during ``phase`` into one clear error that says how to resume.

    Lightning answers Ctrl-C with ``sys.exit(1)`` after its own shutdown, and SIGTERM with a ``SystemExit`` of code 0
    that a scheduler would take for success; both become exit codes a shell or SLURM understands (130, 143). submitit's
    ``sys.exit(-1)`` after requeueing a SLURM job (its SIGUSR2 handler) is said as such, not as Ctrl-C (exit 143).
    """
    requeued = False  # submitit's exit after requeueing the job
    try:
        yield
    except SIGTERMException as err:
        cause: type[UserError] = Preempted
        error: BaseException  # the Ctrl-C branches below hold other exceptions
        how, error = "SIGTERM", err
    except SystemExit as err:
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        requeued = is_submitit_requeue(err)
        if requeued:  # not Ctrl-C: the job is already back in SLURM's queue
            cause, how, error = Preempted, "submitit's requeue of this SLURM job (preempted or at its time limit)", err
        else:
            cause, how, error = Interrupted, "Ctrl-C", err
    except KeyboardInterrupt as err:  # outside Lightning's own handling (e.g. while fusing)
        cause, how, error = Interrupted, "Ctrl-C", err
    except RuntimeError as err:
        # a SIGTERM sent to the whole process group (SLURM ending or preempting the job, kill -TERM -<pgid>) also
        # ends the DataLoader workers, and PyTorch says so before Lightning's own SIGTERM handling can
        if "is killed by signal: Terminated" not in str(err):
            raise
        cause, how, error = Preempted, "SIGTERM", err
    else:
        return
    last = _last_checkpoint(run_dir)
    message = (
        f"{phase} stopped by {how} at epoch {trainer.current_epoch}, global step {trainer.global_step}; {consequence}."
    )
    if summary is not None:
        summary.status, summary.error = "interrupted", message
        _write_summary(trainer, run_dir, summary)
        resume = f" Measure it with: python deploy.py ckpt={summary.fused_dir}" if summary.fused_dir else ""
    elif requeued:
        resume = (
            f" The requeued job resumes from {last}."
            if last.is_file() and resumes_when_restarted
            else " The requeued job starts over (auto_resume=false or no checkpoint yet)."
        )
    else:
        resume = _resume_advice(run_dir, last)
        if cause is Preempted and slurm_job() and last.is_file() and resumes_when_restarted:
            resume += " (if SLURM requeues this job, it resumes from there by itself)"
    raise cause(message + resume) from error


# overrides that say where a run goes and how it starts, not what it trains: the resume command sets its own
_PLACEMENT = ("hydra.run.dir=", "auto_resume=", "ckpt_path=", "+ckpt_path=", "++ckpt_path=")


def _command_overrides() -> list[str]:
    """This run's command-line overrides (Hydra's), as typed."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _resume_advice(run_dir: Path, last: Path) -> str:
    """How to go on after Ctrl-C or SIGTERM, as a whole command: the run's own overrides (its model and data;
    without them the checkpoint holds another network than the config builds), or for a search trial the search."""
    overrides = _command_overrides()
    if any(o.startswith("hparams_search=") for o in overrides):  # a trial: resuming it alone leaves the study
        if os.environ.get("SUBMITIT_EXECUTOR") == "local":  # a job of its own: the search goes on without it
            return " The search records this trial as failed and goes on"  # a stopped search says how to go on
        return (
            " Continue the search with its command and hparams_search.resume=true: finished trials are kept and this "
            "one runs again"
        )
    if _in_multirun():  # a grid sweep's job: the sweep's own last line continues every job, this one included
        return (
            " The sweep's last line gives the command that continues the sweep (this job resumes from its checkpoint)."
        )
    if not last.is_file():
        return " No checkpoint was saved yet: run the same command again to start over."
    kept = [o for o in overrides if not o.startswith(_PLACEMENT)]
    command = " ".join(["python train.py", *(shlex.quote(o) for o in kept)])
    return f" Resume with: {command} auto_resume=true hydra.run.dir={shlex.quote(str(run_dir))}"


def _in_multirun() -> bool:
    """Whether this run is a job of a ``-m`` sweep running in the sweep's own process (Hydra's basic launcher), which
    a Ctrl-C or SIGTERM stops too; a job submitit runs (its own process, a SLURM job) goes on alone."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return in_sweep and not os.environ.get("SUBMITIT_EXECUTOR")


def _close_loggers(trainer: L.Trainer) -> None:
    """Lightning leaves a wandb run open (for reuse in the same script): finish it so an offline run is complete
    on disk (``wandb sync`` needs that) and a sweep's next job starts a run of its own."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            import wandb

            logger.experiment.finish()
            # finish() can return before wandb's service has written the offline run file (seen in CI under load:
            # only its header was on disk); teardown waits for the service, as the exit hook of a script does
            wandb.teardown()


def _check_optimized_metric(cfg: DictConfig) -> str | None:
    name = cfg.get("optimized_metric")
    if name and name not in SUMMARY_METRICS:
        raise UserError(
            f"optimized_metric={name} is not a training summary value; choose one of: {', '.join(SUMMARY_METRICS)}"
        )
    return name or None


def optimized_metric(cfg: DictConfig, summary: TrainSummary) -> float | None:
    """The summary value named by ``cfg.optimized_metric``, returned to Hydra sweepers (e.g. Optuna)."""
    name = _check_optimized_metric(cfg)
    return None if name is None else summary.value(name)
