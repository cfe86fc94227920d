"""Running a sweep's runs: one run as a (Ray) task, a Ray executor (local or a cluster) and a
serial one (``use_ray=False``, tests and debugging)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from grokinterp.config import GrokinterpError, RunConfig
from grokinterp.experiments.grid import RunSpec
from grokinterp.store import Run, has_resume_state, is_run_dir

INSTALL_HINT = "the sweep command needs Ray: pip install 'grokinterp[sweep]'"
RAY_DIR = "ray"
# Ray puts ~70 bytes of session and socket names under its temp dir; AF_UNIX paths end at 107.
_MAX_RAY_TEMP_LEN = 36


# ----------------------------------------------------------------------------- one run


def execute_run(config: dict[str, Any], out_dir: str, threads: int = 1) -> dict[str, Any]:
    """Train one run of a sweep (the body of a Ray task; also called in-process by tests).

    Starts fresh, resumes a killed run from its last checkpoint, or restarts a folder that holds
    no resumable state. Never raises: an error comes back as ``{"ok": False, "error": ...}``.
    """
    import torch

    from grokinterp.training import train

    torch.set_num_threads(max(1, int(threads)))
    start = time.perf_counter()
    out = Path(out_dir)
    resume = is_run_dir(out) and has_resume_state(out)
    overwrite = not resume and out.exists()
    try:
        cfg = RunConfig.from_dict(config)
        cfg.train.threads = max(1, int(threads))  # training sets its own thread count
        run = train(cfg, out, resume=resume, overwrite=overwrite, progress=False)
    except Exception as e:  # noqa: BLE001 — any failure fails the cell, not the sweep
        return {
            "ok": False,
            "error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
            "traceback": traceback.format_exc()[-4000:],
            "resumed": resume,
            "host": socket.gethostname(),
        }
    keep = ("step", "train_acc", "test_acc", "train_loss", "test_loss")
    return {
        "ok": True,
        "metrics": [{k: m[k] for k in keep if k in m} for m in run.metrics],
        "final_step": run.info.get("final_step"),
        "stopped_early": run.info.get("stopped_early"),
        "train_wall_s": run.info.get("wall_time_s"),
        "elapsed_s": round(time.perf_counter() - start, 2),
        "resumed": resume,
        "host": socket.gethostname(),
    }


def _finished(path: Path, cfg: RunConfig) -> bool:
    """True if ``path`` holds this run, complete for this step budget."""
    if not is_run_dir(path):
        return False
    try:
        run = Run.open(path)
    except GrokinterpError:
        return False
    info = run.info
    if info.get("status") != "complete" or run.config.train.steps != cfg.train.steps:
        return False
    return bool(info.get("stopped_early")) or info.get("final_step", -1) >= cfg.train.steps


def _partial(path: Path) -> bool:
    return is_run_dir(path) and has_resume_state(path)


# ----------------------------------------------------------------------------- executors


def _import_ray():
    try:
        import ray
    except ImportError:
        raise GrokinterpError(INSTALL_HINT) from None
    return ray


def _ray_temp_dir(sweep_dir: Path) -> tuple[Path, Path | None]:
    """Ray's temp dir inside the sweep folder; a short /tmp symlink to it if the path is long."""
    target = (sweep_dir / RAY_DIR).resolve()
    target.mkdir(parents=True, exist_ok=True)
    if len(str(target)) <= _MAX_RAY_TEMP_LEN:
        return target, None
    tag = hashlib.sha1(str(target).encode()).hexdigest()[:10]
    base = Path(tempfile.gettempdir())
    if len(str(base)) > _MAX_RAY_TEMP_LEN - 20:
        base = Path("/tmp")
    link = base / f"gi-ray-{tag}"
    if link.is_symlink() or link.exists():
        link.unlink()  # left by a killed sweep (the lock keeps a live one off this folder)
    os.symlink(target, link)
    return link, link


class _RayExecutor:
    """Submits runs as Ray tasks; starts (and later stops) a local Ray unless ``address``."""

    def __init__(
        self,
        sweep_dir: Path,
        address: str | None,
        cpus_per_run: float,
        gpus_per_run: float,
        max_concurrent: int | None,
        max_retries: int,
    ):
        ray = _import_ray()
        self.ray = ray
        self.owned = False
        self.link: Path | None = None
        self.cpus, self.gpus = cpus_per_run, gpus_per_run
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray logs start-up notices through the "ray" logger before ray.init configures it.
        logging.getLogger("ray").setLevel(logging.ERROR)
        common = dict(
            log_to_driver=False,
            include_dashboard=False,
            logging_level=logging.ERROR,
        )
        if ray.is_initialized():
            pass  # the caller's Ray (e.g. a notebook that called ray.init itself)
        elif address:
            ray.init(address=address, **common)
            self.owned = True
        else:
            temp, self.link = _ray_temp_dir(sweep_dir)
            n_cpu = os.cpu_count() or 1
            if max_concurrent:
                n_cpu = max(1, math.ceil(max_concurrent * cpus_per_run))
            ray.init(
                num_cpus=n_cpu,
                _temp_dir=str(temp),
                object_store_memory=100 * 1024**2,  # results are small metric lists
                **common,
            )
            self.owned = True
            if gpus_per_run > 0 and ray.cluster_resources().get("GPU", 0) < gpus_per_run:
                self.shutdown()
                raise GrokinterpError(
                    f"--gpus-per-run {gpus_per_run:g} but this machine has no (or too few) GPUs "
                    "visible to Ray; use --gpus-per-run 0 or --address of a GPU cluster"
                )
        self.fn = ray.remote(execute_run)
        self.max_retries = max_retries

    def capacity(self) -> int:
        res = self.ray.cluster_resources()
        n = math.floor(res.get("CPU", 1) / self.cpus) if self.cpus > 0 else 10**6
        if self.gpus > 0:
            n = min(n, math.floor(res.get("GPU", 0) / self.gpus))
        return max(1, n)

    def submit(self, run: RunSpec, out: Path) -> Any:
        threads = max(1, int(self.cpus))
        task = self.fn.options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries, name=run.name
        )
        return task.remote(run.config.to_dict(), str(out), threads)

    def wait(self, handles: list, timeout: float) -> list:
        ready, rest = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as e:  # worker crash, missing module on a node...
            cause = getattr(e, "cause", None) or e
            text = f"{type(cause).__name__}: {cause}"
            return {"ok": False, "error": text.strip().splitlines()[-1][:500], "traceback": text}

    def cancel(self, handles: list) -> None:
        for h in handles:
            try:
                self.ray.cancel(h, force=True)
            except Exception:  # noqa: BLE001 — best effort on the way out
                pass

    def shutdown(self) -> None:
        if self.owned:
            self.ray.shutdown()
            self.owned = False
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()
            self.link = None


class _SerialExecutor:
    """Runs each submitted run at once, in this process (tests; debugging without Ray)."""

    def __init__(self, cpus_per_run: float = 1):
        self.cpus = cpus_per_run
        self.results: dict[int, dict[str, Any]] = {}
        self.counter = itertools.count()

    def capacity(self) -> int:
        return 1

    def submit(self, run: RunSpec, out: Path) -> int:
        h = next(self.counter)
        self.results[h] = execute_run(run.config.to_dict(), str(out), max(1, int(self.cpus)))
        return h

    def wait(self, handles: list, timeout: float) -> list:
        return list(handles)

    def result(self, handle: int) -> dict[str, Any]:
        return self.results.pop(handle)

    def cancel(self, handles: list) -> None:
        pass

    def shutdown(self) -> None:
        pass
