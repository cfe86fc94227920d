import json
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
    summary: dict | None = None  # the JSON line printed by the cell tagged "summary"
    path: Path | None = None  # the executed copy

    @property
    def text(self) -> str:
        return "\n".join(o.get("text", "") for o in self.outputs)

    @property
    def n_figures(self) -> int:
        return sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in self.outputs)

    @property
    def n_images(self) -> int:
        """Figures that also carry a static PNG (what GitHub and nbviewer show)."""
        return sum(
            {"application/vnd.plotly.v1+json", "image/png"} <= set(o.get("data", {}))
            for o in self.outputs
        )


# Every variable the notebooks read: cleared so that the caller's environment never leaks in.
NOTEBOOK_ENV = (
    "GROKINTERP_NB_DIR",
    "GROKINTERP_DEMO_RUN",
    "GROKINTERP_DIGITS_RUN",
    "GROKINTERP_TICKETS_DIR",
    "GROKINTERP_TRANSFER_DIR",
    "GROKINTERP_FAST",
)


def static_images_available() -> bool:
    """kaleido and a system Chromium are present, so executed notebooks carry PNGs."""
    import importlib.util

    from grokinterp.report.export import find_chromium

    return importlib.util.find_spec("kaleido") is not None and find_chromium() is not None


@pytest.fixture
def run_notebook(monkeypatch, tmp_path):
    """Execute a *copy* of ``notebooks/<name>`` in ``tmp_path/<where>`` (the kernel's working
    directory), as a user would after copying it out of the repository, with the given
    environment variables; fails on any cell error. The notebooks' default run folder is
    redirected into ``tmp_path/cache`` (``XDG_CACHE_HOME``)."""

    def run(name: str, timeout: int = 300, where: str = "nb", **env: str) -> NotebookResult:
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        for key in NOTEBOOK_ENV:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        (tmp_path / where).mkdir(parents=True, exist_ok=True)
        path = Path(shutil.copy(ROOT / "notebooks" / name, tmp_path / where / name))
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.perf_counter()
        client.execute()
        elapsed = time.perf_counter() - start
        nbformat.write(nb, path)  # kept for inspection
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not any(o.get("output_type") == "error" for o in outputs)
        summary = None
        for cell in nb.cells:
            if "summary" in cell.get("metadata", {}).get("tags", []):
                lines = [o["text"] for o in cell.outputs if o.get("name") == "stdout"]
                summary = json.loads("".join(lines).strip().splitlines()[-1])
        return NotebookResult(outputs, elapsed, summary, path)

    return run


@pytest.fixture(scope="session")
def _grokked_demo(tmp_path_factory) -> Path:
    """A grokked demo run: checkpoints/demo if there, else trained once for the whole session
    (several slow tests read one; training it each time cost minutes of CI)."""
    for name in ("demo", "demo_fourier"):
        if (ROOT / "checkpoints" / name / "run.json").is_file():
            return ROOT / "checkpoints" / name
    from grokinterp.config import load_preset
    from grokinterp.training import train

    torch.set_num_threads(1)
    return train(
        load_preset("demo"), tmp_path_factory.mktemp("grokked") / "demo", progress=False
    ).path


@pytest.fixture
def grokked_demo(_grokked_demo: Path, tmp_path: Path) -> Path:
    """A private copy (without the analysis cache) of the session's grokked demo run."""
    dst = tmp_path / "demo"
    shutil.copytree(_grokked_demo, dst, ignore=shutil.ignore_patterns("analysis", ".lock"))
    return dst


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
