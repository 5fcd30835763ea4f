"""Calibration and plan evaluations over many processes and hosts, with ``torch.distributed``.

Launched by ``torchrun`` (any number of processes on one or more hosts; ``gloo`` on CPUs,
``nccl`` on GPUs), every rank runs the same stages; the expensive, sample- or plan-parallel work is
split and its results combined:

- **calibration**: each rank takes a contiguous shard of the calibration samples
  (:func:`shard`), calibrates it, and :func:`reduce_calibration` combines the per-layer figures:
  means weighted by sample counts, maxima by max, so every rank holds the result the single
  process computes (to floating-point summation order). The measured-error pass
  (``format_errors.measure_format_errors``) runs after that first reduction, since its rounding uses
  the maxima of *all* samples, and is reduced again;
- **plan evaluations** (pareto-greedy's units, ip-pairs' pairs, any list of independent plans):
  :func:`map_items` runs item ``i`` on rank ``i % world``, gathers, and returns the results in
  order on every rank; the same item gives the same figure whichever rank ran it, because every
  rank evaluates on the same held-out samples;
- **errors**: every collective step first gathers each rank's status (:func:`all_ok`): an error on
  any rank stops every rank with that rank's message, instead of leaving the others waiting;
- **output**: only rank 0 writes files and shows progress (:func:`is_main`).

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) nothing here does anything: the
world is one process.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np

from onnx_amp.core.errors import OnnxAmpError


def _dist():
    import torch.distributed as dist

    return dist


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` described in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...). Returns whether this process runs in a group of more than one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist = _dist()
    if not dist.is_initialized():
        import atexit

        import torch

        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
        atexit.register(finish)
    return dist.get_world_size() > 1


def finish() -> None:
    """Leave the process group (its threads stopped before the interpreter exits: a gloo group
    torn down at exit aborts the process); registered at exit by :func:`init_from_env`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    dist = _dist()
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return world()[0] == 0


def shard(n: int, rank: int | None = None, size: int | None = None) -> slice:
    """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    r, s = world() if rank is None else (rank, size)
    base, extra = divmod(n, s)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def my_samples(n: int) -> slice:
    """This rank's share of ``n`` calibration samples (all of them outside a group); every rank
    needs at least one."""
    rank, size = world()
    if n < size:
        raise OnnxAmpError(f"{n} calibration sample(s) for {size} processes: give at least one per process "
                           "(--calibration_samples) or start fewer")
    return shard(n, rank, size)


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` outside a group)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    _dist().all_gather_object(out, obj)
    return out


def all_ok(error: BaseException | None) -> None:
    """A synchronisation point: raise on every rank if any rank failed, with that rank's message."""
    from onnx_amp.core.errors import describe

    msg = None if error is None else describe(error)[0]
    statuses = gather(msg)
    failed = [(r, m) for r, m in enumerate(statuses) if m is not None]
    if failed:
        r, m = failed[0]
        if error is not None and r == world()[0]:
            raise error
        raise OnnxAmpError(f"rank {r} of {len(statuses)} failed: {m}")


def run_everywhere(fn: Callable[[], Any]) -> list[Any]:
    """Run ``fn`` on every rank; gather its results (in rank order), or raise everywhere if any rank failed."""
    try:
        value, err = fn(), None
    except Exception as e:  # noqa: BLE001 (re-raised on every rank by all_ok)
        value, err = None, e
    all_ok(err)
    return gather(value)


def everywhere(fn: Callable[[], Any]) -> Any:
    """``fn()`` on this rank; if it failed on any rank, raise on every rank (no gathering of results)."""
    try:
        value, err = fn(), None
    except Exception as e:  # noqa: BLE001 (re-raised on every rank by all_ok)
        value, err = None, e
    all_ok(err)
    return value


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only, its result on every rank (an error there raised everywhere): for
    work whose result differs from run to run (timing) and must be the same on every rank."""
    rank, size = world()
    if size == 1:
        return fn()
    try:
        value, err = (fn() if rank == 0 else None), None
    except Exception as e:  # noqa: BLE001 (re-raised on every rank by all_ok)
        value, err = None, e
    all_ok(err)
    return gather(value)[0]


def map_items(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]``, item ``i`` computed on rank ``i % world``, the list on every rank."""
    rank, size = world()
    if size == 1:
        return [fn(x) for x in items]
    mine = run_everywhere(lambda: {i: fn(items[i]) for i in range(rank, len(items), size)})
    out: dict[int, Any] = {}
    for part in mine:
        out.update(part)
    return [out[i] for i in range(len(items))]


# --- combining calibration results ------------------------------------------------------------

def _combine(values: list[Any], weights: list[float], field: str) -> Any:
    """Maxima (fields named ``amax*``) by max; every other number, array or dict of them by the
    sample-weighted mean."""
    present = [(v, w) for v, w in zip(values, weights) if v is not None]
    if not present:
        return None
    vs, ws = [v for v, _ in present], [w for _, w in present]
    if isinstance(vs[0], dict):
        keys = dict.fromkeys(k for v in vs for k in v)
        return {k: _combine([v.get(k) for v in vs], ws, field) for k in keys}
    if field.startswith("amax"):
        return np.maximum.reduce([np.asarray(v) for v in vs]) if isinstance(vs[0], np.ndarray) else max(vs)
    if isinstance(vs[0], (int, float, np.ndarray, np.floating)) and not isinstance(vs[0], bool):
        total = sum(ws)
        acc = sum(np.asarray(v, dtype=np.float64) * w for v, w in zip(vs, ws)) / total
        return acc if isinstance(vs[0], np.ndarray) else float(acc)
    return vs[0]


_IDENTITY_FIELDS = ("layer", "node", "kind", "unit", "weight_axis")


def reduce_calibration(result, samples: int | None = None):
    """Combine the ranks' ``runtime.calibrate.CalibrationResult`` (each over its own shard) into the
    result over all samples, on every rank. Layers that any rank could not calibrate stay unmatched.
    ``samples``: this rank's sample count, when ``result`` is already a combined one whose per-rank
    part is only the measured errors (``LayerStats.extra``) of ``measure_format_errors``."""
    local = int(result.samples if samples is None else samples)
    parts = run_everywhere(lambda: (result, local))
    if len(parts) == 1:
        return result
    weights = [float(n) for _, n in parts]
    parts = [p for p, _ in parts]
    unmatched = {u["layer"]: u for p in parts for u in p.unmatched}
    layers = {}
    for lid in result.layers:
        stats = [p.layers.get(lid) for p in parts]
        if lid in unmatched or any(s is None for s in stats):
            continue
        fields = {}
        for f in dataclasses.fields(stats[0]):
            vals = [getattr(s, f.name) for s in stats]
            fields[f.name] = vals[0] if f.name in _IDENTITY_FIELDS else _combine(vals, weights, f.name)
        layers[lid] = type(stats[0])(**fields)
    no_grad = sorted({lid for p in parts for lid in p.no_gradient} & set(layers))
    return dataclasses.replace(
        result, layers=layers, unmatched=list(unmatched.values()), no_gradient=no_grad,
        samples=int(sum(weights)), batches=sum(p.batches for p in parts),
        mean_loss=float(sum(p.mean_loss * w for p, w in zip(parts, weights)) / sum(weights)),
        seconds=max(p.seconds for p in parts), opaque=sorted({o for p in parts for o in p.opaque}),
    )
