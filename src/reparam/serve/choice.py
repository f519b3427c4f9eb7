"""Which deploy target to serve (or to predict with), from the deploy report made from the same weights.

By default: the newest ``report.json`` recorded for these weights on this kind of device
(:mod:`reparam.deploy.report_index`), and in it the fastest target whose gate passed and that gives the reference's
answer on at least ``min_agreement`` of the test images, at the largest benchmarked batch size that fits
``max_batch_size``. A reduced-precision gate bounds the accuracy drop, a net figure: INT8 that changed 2 of 36
answers, one right and one wrong, drops 0 points; served by default, it answered a new user's photos worse.
``report=<path>`` names the report, ``target=<name>`` the target (served whatever its agreement, once its gate
passed). Without a report only the fused fp32 model can be served: it is the reference, checked at training time.
The multi-branch train form is never served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..deploy.report_index import INDEX_FILE, find_reports, run_dir_of
from ..deploy.targets import REFERENCE, TARGETS, TRAIN_FORM, check_runs_here
from ..errors import UserError

__all__ = ["ServedTarget", "choose_target", "agreement_share", "NOT_SERVED"]

NOT_SERVED = {TRAIN_FORM}  # the multi-branch network: what fusion replaces


@dataclass(frozen=True)
class ServedTarget:
    """The target that answers requests, and what deploy measured of it."""

    name: str
    label: str  # "onnxruntime int8 cpu"
    chosen_because: str
    report: str | None = None  # the report.json it was chosen from
    accuracy: float | None = None  # on the test split (deploy's), or recorded at training time without a report
    correct: int | None = None
    num_images: int | None = None
    throughput: dict[str, float] = field(default_factory=dict)  # deploy's images/s by batch size
    artifact: str | None = None  # the file an ONNX-based target runs (the one deploy checked)
    channels_last: bool = False
    compile_mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _load_report(path: Path, options: str) -> dict:
    try:
        report = json.loads(path.read_text())
    except OSError as err:
        raise UserError(
            f"{options}.report={path} cannot be read ({err.strerror}); pass the report.json a deploy run "
            "wrote (logs/deploy/runs/<time>/report.json)"
        ) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{options}.report={path} is not JSON ({err}); pass a deploy report.json") from err
    if not isinstance(report, dict) or not isinstance(report.get("targets"), dict):
        raise UserError(
            f"{options}.report={path} is not a deploy report with targets (schema_version 2); run deploy.py "
            "again with this version"
        )
    return report


def _named_report(path: Path, checkpoint: Path, weights: str, device_type: str, options: str) -> dict:
    """A report the user named: it must come from these weights and this kind of device."""
    report = _load_report(path, options)
    recorded = {e.report for e in find_reports(checkpoint, weights, device_type)}
    same_file = Path(str(report.get("checkpoint", ""))).resolve() == checkpoint.resolve()
    if not same_file and str(path.resolve()) not in recorded:
        raise UserError(
            f"{options}.report={path} was made from {report.get('checkpoint')}, not from {checkpoint}; pass "
            "that checkpoint, or a report of a deploy run on this one"
        )
    report_device = str(report.get("device", "")).split(":")[0]
    if report_device != device_type:
        raise UserError(
            f"{options}.report={path} measured targets on {report_device}, but this runs on "
            f"{device_type}; pass device={report_device} or a report made on {device_type}"
        )
    return report


def _batch_size(throughput: dict[str, float], max_batch_size: int) -> str | None:
    """The largest benchmarked batch size <= max_batch_size (else the smallest benchmarked)."""
    sizes = sorted(int(b) for b in throughput)
    if not sizes:
        return None
    fitting = [b for b in sizes if b <= max_batch_size]
    return str(fitting[-1] if fitting else sizes[0])


def _artifact(report: dict, name: str) -> str | None:
    if not TARGETS[name].needs_onnx:
        return None
    entry = report["targets"][name]
    path = entry.get("artifact") or (report.get("exports", {}).get("onnx") or {}).get("path")
    if not path or not Path(path).is_file():
        raise UserError(f"target {name} runs {path or 'an ONNX file'}, which is gone; run deploy.py again")
    return str(path)


def _served(report: dict, report_path: str, name: str, because: str) -> ServedTarget:
    entry = report["targets"][name]
    details = entry.get("details") or {}
    return ServedTarget(
        name=name,
        label=str(entry.get("label", name)),
        chosen_because=because,
        report=report_path,
        accuracy=entry.get("accuracy"),
        correct=entry.get("correct"),
        num_images=entry.get("num_images"),
        throughput={str(k): float(v) for k, v in (entry.get("throughput") or {}).items()},
        artifact=_artifact(report, name),
        channels_last=bool(details.get("channels_last", False)),
        compile_mode=details.get("compile_mode"),
    )


def _has_benchmark(report: dict) -> bool:
    """Whether a deploy report measured any target's speed."""
    return any((entry or {}).get("throughput") for entry in report["targets"].values())


def _passed(entry: dict) -> bool:
    return bool((entry.get("gate") or {}).get("passed"))


def agreement_share(value: object, setting: str) -> float:
    """``min_agreement`` as given on the command line: a share of the test images, 0 to 1."""
    try:
        share = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise UserError(f"{setting}={value} must be a share of the test images from 0 to 1 (0.99: 99%)")
    return share


def _agreement(entry: dict) -> float:
    """The share of test images on which the target's top-1 answer is the reference's (1.0 when not recorded)."""
    changed, images = entry.get("disagreements"), entry.get("num_images")
    return 1.0 - changed / images if changed is not None and images else 1.0


def choose_target(
    checkpoint: str | Path,
    weights: str,
    device_type: str,
    *,
    target: str | None = None,
    report: str | Path | None = None,
    max_batch_size: int = 1,
    recorded_accuracy: float | None = None,
    options: str = "serve",
    min_agreement: float = 0.99,
) -> ServedTarget:
    """The target to serve for these weights (``weights``: :func:`~reparam.deploy.report_index.weights_sha256`);
    ``options``: the config node the user names ``target`` and ``report`` in (``serve``, ``prediction``)."""
    checkpoint = Path(checkpoint)
    if target is not None and target not in TARGETS:
        raise UserError(
            f"unknown target '{target}'; choose from {', '.join(t for t in TARGETS if t not in NOT_SERVED)}"
        )
    if target in NOT_SERVED:
        raise UserError(
            f"{options}.target={target} is the multi-branch network fusion replaces; serve a fused target "
            f"(e.g. {options}.target={REFERENCE})"
        )
    if target is not None:
        check_runs_here(target, torch.device(device_type), f"{options}.target={target}")
    if report is not None:
        report_path = Path(report).expanduser()
        data = _named_report(report_path, checkpoint, weights, device_type, options)
        where = f"{report_path} ({options}.report)"
    else:
        found = find_reports(checkpoint, weights, device_type)
        if not found:
            return _without_report(checkpoint, device_type, target, recorded_accuracy, options)
        report_path, data = Path(found[0].report), _load_report(Path(found[0].report), options)
        where = f"the newest deploy report of these weights on {device_type}, {report_path}"
        if target is None and not _has_benchmark(data):
            # a quick deploy (benchmark.enabled=false) does not hide an earlier one that measured the speeds: a
            # user's server moved from INT8 to the fused fp32 model, 4.6x slower, after one
            for entry in found[1:]:
                older = _load_report(Path(entry.report), options)
                if _has_benchmark(older):
                    where = (
                        f"the newest deploy report of these weights on {device_type} with a benchmark, {entry.report} "
                        f"(the newer {report_path} timed nothing)"
                    )
                    report_path, data = Path(entry.report), older
                    break
        if target is not None and target not in data["targets"]:
            # a later deploy of other targets does not hide an earlier one that checked the named target
            for entry in found[1:]:
                older = _load_report(Path(entry.report), options)
                if target in older["targets"]:
                    report_path, data = Path(entry.report), older
                    where = f"the newest deploy report of these weights on {device_type} that checked it, {report_path}"
                    break
    targets = data["targets"]
    if target is not None:
        if target not in targets:
            raise UserError(
                f"{options}.target={target} was not checked in {report_path}; run python deploy.py "
                f"ckpt={checkpoint} targets=[auto,{target}] first"
            )
        if not _passed(targets[target]):
            failure = (targets[target].get("gate") or {}).get("failure")
            raise UserError(f"{options}.target={target} failed its check in {report_path}: {failure}")
        return _served(data, str(report_path), target, f"{options}.target, checked in {where}")
    passed = {n: e for n, e in targets.items() if n in TARGETS and n not in NOT_SERVED and _passed(e)}
    candidates = {n: e for n, e in passed.items() if _agreement(e) >= min_agreement}
    changes = [
        f"{n} changed {e['disagreements']} of {e['num_images']} test answers ({_agreement(e):.1%} agree; "
        f"{options}.min_agreement={min_agreement:g}, or {options}.target={n} to serve it)"
        for n, e in passed.items()
        if n not in candidates
    ]
    timed = {
        n: e["throughput"][bs]
        for n, e in candidates.items()
        if (bs := _batch_size(e.get("throughput") or {}, max_batch_size)) is not None
    }
    if not timed:
        return _served(data, str(report_path), REFERENCE, f"{where} has no benchmark: the fused fp32 reference")
    best = max(timed, key=lambda name: timed[name])
    bs = _batch_size(candidates[best]["throughput"], max_batch_size)
    # the report lists the train form too (the reference of the check): say why it is not counted here
    left_out = sorted(n for n in targets if n in NOT_SERVED)
    why = f" ({', '.join(left_out)} {'is' if len(left_out) == 1 else 'are'} not served)" if left_out else ""
    # a target of the user's own that this process did not import: said, not dropped without a word
    unknown = [
        f"{n} (no such target here: imports=[<the module that registers it>])"
        for n, e in targets.items()
        if n not in TARGETS and _passed(e)
    ]
    changes += unknown
    left_out_changes = f"; left out: {'; '.join(changes)}" if changes else ""
    return _served(
        data,
        str(report_path),
        best,
        f"fastest of the {len(candidates)} servable targets that passed their check{why}, at batch {bs} "
        f"({timed[best]:.0f} images/s), in {where}{left_out_changes}",
    )


def _without_report(
    checkpoint: Path, device_type: str, target: str | None, recorded_accuracy: float | None, options: str
) -> ServedTarget:
    index = run_dir_of(checkpoint) / INDEX_FILE
    if target not in (None, REFERENCE):
        raise UserError(
            f"{options}.target={target} needs a deploy report that checked it, and none for these weights on "
            f"{device_type} is recorded in {index}; run python deploy.py ckpt={checkpoint} "
            f"targets=[auto,{target}] first, or pass {options}.report=<report.json>"
        )
    return ServedTarget(
        name=REFERENCE,
        label=f"fused torch fp32 {device_type}",
        chosen_because=(
            f"no deploy report of these weights on {device_type} (none recorded in {index}): the fused "
            f"fp32 model; python deploy.py ckpt={checkpoint} measures faster targets"
        ),
        accuracy=recorded_accuracy,
    )
