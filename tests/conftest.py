import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


# A demo-shaped config small enough to train in about a second.
TINY_OVERRIDES = [
    "task.p=11",
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_head=8",
    "model.d_mlp=32",
    "train.steps=30",
    "train.eval_every=5",
    "train.checkpoint_every=10",
    "train.checkpoint_log_steps=4",
    "train.early_stop_acc=none",
]


def tiny(extra: list[str] | None = None):
    """The tiny config with extra ``section.key=value`` overrides."""
    from grokinterp.config import apply_overrides, load_preset

    return apply_overrides(load_preset("demo"), TINY_OVERRIDES + (extra or []))


@pytest.fixture
def tiny_config():
    return tiny()


ROOT = Path(__file__).resolve().parents[1]


@dataclass
class NotebookResult:
    outputs: list
    elapsed: float

    @property
    def text(self) -> str:
        return "\n".join(o.get("text", "") for o in self.outputs)

    @property
    def n_figures(self) -> int:
        return sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in self.outputs)


@pytest.fixture
def run_notebook(monkeypatch):
    """Execute ``notebooks/<name>`` top to bottom with nbclient (as a user would), with the given
    environment variables; fails on any cell error."""

    def run(name: str, timeout: int = 300, **env: str) -> NotebookResult:
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        path = ROOT / "notebooks" / name
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.perf_counter()
        client.execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not any(o.get("output_type") == "error" for o in outputs)
        return NotebookResult(outputs, time.perf_counter() - start)

    return run


def copy_of_demo_run(tmp_path: Path) -> Path | None:
    """A copy (without analysis cache or resume state) of a trained demo run in checkpoints/."""
    for name in ("demo", "demo_fourier"):
        src = ROOT / "checkpoints" / name
        if (src / "run.json").is_file():
            dst = tmp_path / "demo"
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis", "state"))
            return dst
    return None


# Parametrize a test over the CPU and (where there is one) a CUDA GPU.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]
