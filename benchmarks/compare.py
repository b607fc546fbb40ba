"""The regression gate: compare a new result with a baseline and fail on regressions.

Result files carry a ``gate`` section: ``{"accuracy": {name: value}, "speed_ratio": {name:
value}}``, every value higher-is-better. Accuracy may drop by at most ``accuracy_tol``
(absolute); a speed ratio by at most ``speed_tol`` (relative). Only ratios measured within one
run are gated for speed (e.g. server / in-process), never absolute times from two machines.
A metric in the baseline that the new result lacks is a failure too. A baseline that gates
nothing, or two results of different benchmarks, splits, fused method sets or server settings,
are refused; another data set, model (sha256), machine or load generator is noted.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.registry import Benchmark, fail, register_benchmark
from benchmarks.report import distinct_decimals
from detector.argtypes import fraction

__all__ = ["GateResult", "compare_results", "load_result"]


@dataclass
class GateResult:
    failures: list[str]
    checked: list[str]
    notes: list[str] = field(default_factory=list)  # what differs between the two runs

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        lines = [*(f"note: {n}" for n in self.notes), *self.checked]
        lines += [f"REGRESSION: {f}" for f in self.failures]
        lines.append("gate: PASS" if self.ok else f"gate: FAIL ({len(self.failures)} regressions)")
        return "\n".join(lines)


def load_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read result {path}: {exc}") from None
    if not isinstance(data, dict) or "gate" not in data:
        raise ValueError(f"{path} has no 'gate' section (not a benchmark result?)")
    gate = data["gate"]
    if not isinstance(gate, dict):
        raise ValueError(f"{path}: 'gate' must be an object, got {type(gate).__name__}")
    for kind in GATED:
        metrics = gate.get(kind)
        if metrics is None:  # absent: gates nothing of this kind
            continue
        if not isinstance(metrics, dict):
            raise ValueError(f"{path}: gate.{kind} must be an object of name: value")
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{path}: gate.{kind}.{name} must be a number, got {value!r}")
            try:  # JSON integers have no size limit; the gate does float arithmetic on them
                metrics[name] = float(value)
            except OverflowError:
                raise ValueError(
                    f"{path}: gate.{kind}.{name} is an integer too large for a float, not a "
                    "measurement"
                ) from None
    return data


GATED = ("accuracy", "speed_ratio")


# What the two results must share to be compared (where both record it): the kind of
# benchmark, the split scored, which methods the fused verdict fused (in any order), and how
# the servers ran (engine device and precision, our server's processes): another setting is
# another measurement, not a regression.
SAME = ("benchmark", "split", "fused_methods", "engine_args", "server_processes")


def compare_results(
    baseline: dict, new: dict, accuracy_tol: float = 0.02, speed_tol: float = 0.25
) -> GateResult:
    if not any(baseline["gate"].get(kind) for kind in GATED):
        raise ValueError(
            "the baseline gates nothing (its gate has no accuracy or speed metric): every "
            "result would pass it"
        )
    for key in SAME:
        old, now = baseline.get(key), new.get(key)
        if old is not None and now is not None and _same_form(key, old) != _same_form(key, now):
            raise ValueError(
                f"the baseline's {key} is {old!r}, the new result's {now!r}: they do not "
                "measure the same thing"
            )
    failures, checked = [], []
    for kind, tol, relative in (
        ("accuracy", accuracy_tol, False),
        ("speed_ratio", speed_tol, True),
    ):
        for name, old in (baseline["gate"].get(kind) or {}).items():
            if not math.isfinite(old):  # every new value would pass a NaN floor unseen
                raise ValueError(f"the baseline's gate.{kind}.{name} is {old}, not a measurement")
            value = (new["gate"].get(kind) or {}).get(name)
            if value is None:
                failures.append(f"{kind} {name}: missing in the new result")
                continue
            if not math.isfinite(value):
                failures.append(f"{kind} {name}: {value} in the new result (not measured)")
                continue
            floor = old * (1 - tol) if relative else old - tol
            d = distinct_decimals(value, floor, 4)
            line = (
                f"{kind:<11} {name:<45} baseline {old:8.{d}f}  new {value:8.{d}f}  "
                f"floor {floor:8.{d}f}"
            )
            checked.append(line)
            if value < floor - 1e-9 * max(1.0, abs(floor)):  # a drop of exactly tol passes
                failures.append(line)
    return GateResult(failures, checked, _differences(baseline, new))


def _same_form(key: str, value):
    """A SAME field as compared: the fused verdict does not depend on its methods' order."""
    if key == "fused_methods" and isinstance(value, list):
        return sorted(value, key=json.dumps)
    return value


# Where two results may differ and still be compared, but a reader must know: another data
# set, model, machine or load generator moves the numbers by more than a regression would
NOTED = ("data", "model", "device", "client_processes")


def _differences(baseline: dict, new: dict) -> list[str]:
    notes = []
    for key in NOTED:
        old, now = baseline.get(key), new.get(key)
        if old is None or now is None:
            continue
        if key == "model":
            notes += _model_note(old, now)
        elif old != now:
            notes.append(
                f"the baseline's {key} is {old!r}, the new result's {now!r}: the gate compares "
                "them all the same"
            )
    return notes


def _model_note(old, now) -> list[str]:
    """Two results ran the same model when they record the same sha256 (``bench accuracy``,
    ``bench quick``), wherever it was loaded from; an older result that records a path alone
    is compared with a note."""
    digest = [m.get("onnx_sha256") if isinstance(m, dict) else None for m in (old, now)]
    if digest[0] and digest[1]:
        if digest[0] == digest[1]:
            return []
        return [
            f"the baseline's model is {old!r}, the new result's {now!r}: another model (sha256 "
            f"{digest[0][:12]} vs {digest[1][:12]}), which the gate compares all the same"
        ]
    if digest[0] or digest[1]:
        which, model = ("baseline", old) if digest[1] else ("new result", now)
        return [
            f"the {which}'s model {model!r} has no sha256 (an older result): the gate cannot "
            "tell whether both ran the same model"
        ]
    if old != now:
        return [
            f"the baseline's model is {old!r}, the new result's {now!r}: the gate compares them "
            "all the same"
        ]
    return []


# --- command line (the benchmark registry) ---------------------------------------------------


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("baseline", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--accuracy-tol", type=fraction, default=0.02, help="allowed drop, 0..1")
    p.add_argument("--speed-tol", type=fraction, default=0.25, help="allowed slowdown, 0..1")


def _run(args: argparse.Namespace) -> int:

    try:
        gate = compare_results(
            load_result(args.baseline), load_result(args.new), args.accuracy_tol, args.speed_tol
        )
    except ValueError as exc:
        return fail(exc)
    print(gate.render())
    return 0 if gate.ok else 1


register_benchmark(
    Benchmark(
        "compare", "regression gate: exit 1 when NEW regresses against BASELINE", _arguments, _run
    )
)
