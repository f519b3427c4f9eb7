"""The framework APIs reparam relies on that upstream does not promise to keep (private names, internal behaviour).

Each test names the upstream API, what reparam does with it and where, so that a torch / Lightning / Hydra release
that changes it fails here with that message instead of somewhere downstream (or silently). Public replacements
were used wherever one exists: the sweeper is a public ``hydra.plugins.sweeper.Sweeper``, a failed job's error is
read through ``JobReturn.return_value``, and the step-logging rule is computed from public trainer attributes.
"""

import importlib.util
import inspect
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from hydra_plugins.reparam_sweeper import job_batches
from reparam.loggers import CSVLogger, ResumePoint
from reparam.module import ClassifierModule
from reparam.sweep import job_error


def changed(api: str, user: str, what: str) -> str:
    return f"upstream API changed: {api} {what}; {user} relies on it and needs updating"


# --- Hydra -------------------------------------------------------------------------------------------------------


def test_hydra_job_return_value_reraises_a_failed_jobs_exception(capsys: pytest.CaptureFixture[str]) -> None:
    failed = JobReturn(overrides=["optimizer.lr=1"], status=JobStatus.FAILED)
    failed.return_value = ValueError("diverged")  # what Hydra's run_job stores for a job that raised
    err = job_error(failed)
    assert isinstance(err, ValueError) and str(err) == "diverged", changed(
        "hydra.core.utils.JobReturn.return_value", "reparam.sweep.job_error", "no longer re-raises the job's exception"
    )
    assert capsys.readouterr().err == "", "Hydra's 'Error executing job' line should not reach the sweep's stderr"


def test_grid_sweep_jobs_follow_hydras_basic_sweeper_order() -> None:
    overrides = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y", "c=3", "d=range(0,2)"])
    jobs = [[f"a={a}", f"b={b}", "c=3", f"d={d}"] for a in (1, 2) for b in "xy" for d in (0, 1)]
    assert job_batches(overrides, None) == [jobs]
    assert job_batches(overrides, 3) == [jobs[0:3], jobs[3:6], jobs[6:8]]
    # a fixed override stays as typed: Hydra's own rendering would write auto_resume=True, +x=0.001
    typed = OverridesParser.create().parse_overrides(["auto_resume=true", "+x=1e-3", "a=1,2"])
    assert job_batches(typed, None) == [
        [["auto_resume=true", "+x=1e-3", "a=1"], ["auto_resume=true", "+x=1e-3", "a=2"]]
    ]


def test_grid_sweep_refuses_an_interval_in_one_line() -> None:
    overrides = OverridesParser.create().parse_overrides(["optimizer.lr=interval(0.01,0.1)"])
    with pytest.raises(HydraException, match=r"^optimizer.lr: a grid sweep takes lists and ranges, not an interval"):
        job_batches(overrides, None)


# --- Lightning ---------------------------------------------------------------------------------------------------


class _StepRuleProbe(L.LightningModule):
    """Records, at every training step, reparam's public step-logging rule next to Lightning's private one."""

    def __init__(self, stop_at: int | None) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.stop_at = stop_at
        self.seen: list[tuple[int, bool, bool]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch_idx == self.stop_at:
            self.trainer.should_stop = True
        ours = ClassifierModule._writes_step_metrics(SimpleNamespace(_trainer=self.trainer))
        self.seen.append((batch_idx, ours, self.trainer._logger_connector.should_update_logs))
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(("log_every", "accumulate", "stop_at"), [(3, 1, None), (2, 2, None), (4, 1, 5), (0, 1, 5)])
def test_step_logging_rule_matches_lightnings(tmp_path, log_every: int, accumulate: int, stop_at: int | None) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(12, 2))
    probe = _StepRuleProbe(stop_at)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        log_every_n_steps=log_every,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(probe, torch.utils.data.DataLoader(data, batch_size=1))
    assert len(probe.seen) >= 6
    differing = [(step, ours, theirs) for step, ours, theirs in probe.seen if ours != theirs]
    assert not differing, changed(
        "lightning.pytorch's _LoggerConnector.should_update_logs",
        "reparam.module.ClassifierModule._writes_step_metrics (its public re-statement)",
        f"now decides differently at (batch, ours, Lightning's) {differing}",
    )


def test_lightning_module_trainer_is_none_until_attached() -> None:
    module = L.LightningModule()
    assert getattr(module, "_trainer", "missing") is None, changed(
        "lightning.pytorch.LightningModule._trainer",
        "reparam.module.ClassifierModule._writes_step_metrics (a module outside a Trainer logs every step)",
        "is no longer None on a module without a Trainer (the public .trainer raises there)",
    )


def test_lightning_csv_writer_checks_its_directory_in_an_overridable_method(tmp_path) -> None:
    calls: list[str] = []

    class Probe(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            calls.append(self.metrics_file_path)

    Probe(str(tmp_path))
    assert calls == [str(tmp_path / ExperimentWriter.NAME_METRICS_FILE)], changed(
        "lightning.pytorch.loggers.csv_logs.ExperimentWriter._check_log_dir_exists (called by __init__, after "
        "metrics_file_path is set)",
        "reparam.loggers._AppendingWriter (keeps metrics.csv on resume)",
        "is no longer called that way",
    )
    assert inspect.signature(ExperimentWriter.__init__).parameters.keys() == {"self", "log_dir"}, changed(
        "ExperimentWriter.__init__(self, log_dir)", "reparam.loggers._AppendingWriter", "takes other arguments"
    )


def test_csv_logger_keeps_the_rows_before_the_resume_point_and_appends(tmp_path) -> None:
    """End to end through Lightning's CSVLogger internals that reparam.loggers.CSVLogger.experiment re-implements
    (``_experiment``, ``_fs``, ``root_dir``, ``log_dir``) and the writer's ``metrics_keys`` header."""
    first = CSVLogger(str(tmp_path), name="", version="")
    first.log_metrics({"loss": 1.0, "epoch": 0}, step=0)
    first.log_metrics({"loss": 0.5, "epoch": 1}, step=1)
    first.save()
    resumed = CSVLogger(str(tmp_path), name="", version="")
    resumed.resume_at(ResumePoint(epoch=0, global_step=1))
    resumed.log_metrics({"loss": 0.4, "acc": 0.9, "epoch": 1}, step=1)
    resumed.save()
    lines = (tmp_path / ExperimentWriter.NAME_METRICS_FILE).read_text().splitlines()
    assert lines[0].split(",") == ["acc", "epoch", "loss", "step"], changed(
        "lightning's CSV ExperimentWriter.metrics_keys (the header it extends)", "reparam.loggers", f"header {lines}"
    )
    assert [line.split(",")[2] for line in lines[1:]] == ["1.0", "0.4"], f"rows kept/appended wrongly: {lines}"


# --- torch -------------------------------------------------------------------------------------------------------


def test_torch_foreach_lerp_updates_a_tensor_list_in_place() -> None:
    averaged, current = [torch.zeros(3), torch.ones(2)], [torch.ones(3), torch.full((2,), 3.0)]
    torch._foreach_lerp_(averaged, current, 0.25)
    assert torch.equal(averaged[0], torch.full((3,), 0.25)) and torch.equal(averaged[1], torch.full((2,), 1.5)), (
        changed("torch._foreach_lerp_(tensors, tensors, weight: float)", "reparam.ema (the weight average)", "differs")
    )


def test_torch_assert_is_what_fx_records_for_traced_shape_checks() -> None:
    class Checked(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch._assert(x.dim() == 4, "NCHW input")
            return x + 1

    targets = [n.target for n in torch.fx.symbolic_trace(Checked()).graph.nodes if n.op == "call_function"]
    assert torch._assert in targets, changed(
        "torch._assert (as a torch.fx call_function target)", "reparam.autofuse (drops shape asserts)", "is not traced"
    )


def test_torch_batchnorm_classes_share_the_private_base() -> None:
    kinds = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm]
    assert all(issubclass(kind, _BatchNorm) for kind in kinds), changed(
        "torch.nn.modules.batchnorm._BatchNorm (base of BatchNorm1d/2d/3d and SyncBatchNorm)",
        "reparam.fusion, reparam.convert, reparam.autofuse, reparam.deploy.load (isinstance checks)",
        "is no longer their common base",
    )


def test_torch_module_load_from_state_dict_is_called_with_the_prefix() -> None:
    prefixes: list[str] = []

    class Hooked(nn.Linear):
        def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
            prefixes.append(prefix)
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    outer = nn.Sequential(nn.Identity(), Hooked(2, 2))
    outer.load_state_dict(outer.state_dict())
    params = list(inspect.signature(nn.Module._load_from_state_dict).parameters)
    assert prefixes == ["1."] and params[:3] == ["self", "state_dict", "prefix"], changed(
        "torch.nn.Module._load_from_state_dict(self, state_dict, prefix, ...)",
        "reparam.blocks (old checkpoints' keys renamed on load)",
        f"is called differently (prefixes {prefixes}, parameters {params})",
    )


# --- LitServe ----------------------------------------------------------------------------------------------------


def test_litserve_run_starts_its_monitor_through_a_method_with_the_http_processes() -> None:
    ls = pytest.importorskip("litserve")
    run = inspect.getsource(ls.LitServer.run)
    user = "reparam.serve.server._Watch (stops the server when its HTTP process or a worker dies)"
    assert "self._start_worker_monitoring(manager, uvicorn_workers)" in run, changed(
        "litserve.LitServer.run", user, "no longer starts its monitor through _start_worker_monitoring"
    )
    assert run.index("self._start_worker_monitoring(") < run.index("self._shutdown_event.wait()"), changed(
        "litserve.LitServer.run", user, "no longer waits on _shutdown_event after starting its monitor"
    )
    assert "self.inference_workers" in run, changed("litserve.LitServer.run", user, "keeps no inference_workers")
    shutdown = inspect.getsource(ls.LitServer._perform_graceful_shutdown)
    assert "uvicorn_workers.items()" in shutdown, changed(
        "litserve.LitServer._perform_graceful_shutdown", user, "no longer stops the HTTP processes it is given"
    )
    assert shutdown.index("uvicorn_workers.items()") < shutdown.index("iw.terminate()"), changed(
        "litserve.LitServer._perform_graceful_shutdown",
        "reparam.serve.server._Watch.start (workers ignore SIGTERM; their terminate() kills them)",
        "no longer ends the inference workers with terminate() after the HTTP processes",
    )
    loops = inspect.getsource(pytest.importorskip("litserve.loops.loops").inference_worker)
    assert 'logger.exception(f"Error setting up worker' in loops, changed(
        "litserve.loops.loops.inference_worker",
        "reparam.serve.api._QuietSetupError (drops the logged traceback of a failed setup)",
        "no longer logs a failed setup as 'Error setting up worker'",
    )


def test_uvicorn_shutdown_closes_new_connections_and_takes_the_sockets() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from uvicorn.protocols.http.h11_impl import H11Protocol

    protocols: list[type] = [H11Protocol]
    if importlib.util.find_spec("httptools"):  # uvicorn uses it where installed
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        protocols.append(HttpToolsProtocol)
    user = "reparam.serve.server._take_queued_connections_before_stopping"
    assert list(inspect.signature(uvicorn.Server.shutdown).parameters) == ["self", "sockets"], changed(
        "uvicorn.Server.shutdown", user, "takes other arguments than (sockets)"
    )
    assert "self.server_state.connections" in inspect.getsource(uvicorn.Server.shutdown), changed(
        "uvicorn.Server.shutdown", user, "no longer walks server_state.connections"
    )
    for protocol in protocols:  # a connection whose request has not started has cycle None
        assert "if self.cycle is None or self.cycle.response_complete:" in inspect.getsource(protocol.shutdown), (
            changed(f"{protocol.__name__}.shutdown", user, "no longer closes a connection whose cycle is None")
        )
