"""Bad-input campaign (issue 15, item 6): hundreds of hand-made bad inputs through the CLI.

Not collected by pytest (the name does not start with ``test_``). Run it by hand::

    .venv/bin/python tests/campaign_bad_inputs.py            # ~3-5 minutes on 2 cores
    .venv/bin/python tests/campaign_bad_inputs.py -k metrics # only cases whose name matches
    .venv/bin/python tests/campaign_bad_inputs.py --subprocess  # a fresh interpreter per case

Every case is one ``grokinterp ...`` command line run in its own process. By default each
process is forked from this script after it has imported grokinterp (importing torch and
TransformerLens costs 3-10 s per fresh interpreter, which 300 cases cannot afford); the child
then runs the real CLI entry point (``grokinterp.cli.main``) with its own argv, working directory,
stdout and stderr, exactly as the console script does. ``--subprocess`` runs the installed
``grokinterp`` console script instead (same outcomes, much slower). The concurrent-writer cases
always use a real ``grokinterp train`` subprocess as the first writer.

Each case says what should happen: ``fail`` (exit 2 with a one-line error), ``ok`` (exit 0,
optionally with a check of its output, e.g. ``ls`` marking a corrupt run "unreadable") or
``either`` (a value that may legitimately be accepted: only a traceback counts against it).
Outcomes:

* clean: a ``fail`` case exited 2 with one stderr line and no traceback;
* traceback: any case that printed ``Traceback`` or exited with another code (1: an uncaught
  exception);
* silent: a ``fail`` case that exited 0, or an ``ok`` case whose output check failed (bad data
  shown as if it were good);
* messy: exit 2 but not one line; refused: an ``ok`` case that exited 2; timeout.

The parent never runs torch operations (a fork after OpenMP started is unsafe): fixtures that
need torch are built in forked children.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("COLUMNS", "200")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["PYTHONWARNINGS"] = "default"

GROKINTERP = Path(sys.executable).with_name("grokinterp")
TINY = [
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
TINY_ARGS = [a for o in TINY for a in ("--set", o)]
LIVE_ARGS = [*TINY_ARGS, "--set", "train.checkpoint_every=1000", "--set", "train.eval_every=50"]
NOBODY = 65534


@dataclass
class Case:
    name: str
    args: list[str]
    expect: str = "fail"  # fail | ok | either
    area: str = "train"  # whose code answers: for attributing findings
    setup: Callable[[Path], None] | None = None  # runs in the parent before the case
    check: Callable[[str], bool] | None = None  # for ok cases: is the output right?
    nobody: bool = False  # run the command as user nobody (unwritable folders for root)
    timeout: float = 120.0


@dataclass
class Outcome:
    case: Case
    code: int | None
    out: str
    err: str
    seconds: float
    kind: str = field(default="")


# ----------------------------------------------------------------------------- running


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else 1


def run_forked(args: list[str], cwd: Path, timeout: float, nobody: bool) -> tuple:
    out_f, err_f = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: the CLI entry point, as the console script runs it
        code = 1
        try:
            os.chdir(cwd)
            os.dup2(out_f.fileno(), 1)
            os.dup2(err_f.fileno(), 2)
            if nobody:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            sys.argv = ["grokinterp", *args]
            import grokinterp.cli as cli

            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = _exit_code(e)
            except BaseException:  # noqa: BLE001 - what a user would see
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code = None
            break
        time.sleep(0.01)
    texts = []
    for f in (out_f, err_f):
        f.seek(0)
        texts.append(f.read().decode("utf-8", "replace"))
        f.close()
    return code, texts[0], texts[1]


def run_subprocess(args: list[str], cwd: Path, timeout: float, nobody: bool) -> tuple:
    kw = {"user": NOBODY, "group": NOBODY} if nobody else {}
    try:
        p = subprocess.run(
            [str(GROKINTERP), *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            errors="replace",
            **kw,
        )
    except subprocess.TimeoutExpired:
        return None, "", ""
    return p.returncode, p.stdout, p.stderr


def classify(case: Case, code: int | None, out: str, err: str) -> str:
    if code is None:
        return "timeout"
    if "Traceback" in out or "Traceback" in err or code not in (0, 2):
        return "traceback"
    if case.expect == "fail":
        if code == 0:
            return "silent"
        lines = [ln for ln in err.splitlines() if ln.strip()]
        return "clean" if len(lines) == 1 and not out.strip() else "messy"
    if case.expect == "ok":
        if code != 0:
            return "refused"
        if case.check is not None and not case.check(out + err):
            return "silent"
        return "ok"
    return "clean" if code == 2 else "ok"  # either


# ----------------------------------------------------------------------------- fixtures


def in_child(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a forked child (for anything that runs torch ops)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"fixture {fn} failed")


def raw_safetensors(tensors: dict[str, tuple[str, list[int]]], header_len: int | None = None):
    """Bytes of a safetensors file holding zero-filled tensors (no torch needed)."""
    size = {"F32": 4, "F16": 2, "I64": 8, "BOOL": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = size[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    return struct.pack("<Q", header_len or len(h)) + h + b"\0" * offset


def edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    doc = json.loads(path.read_text())
    result = edit(doc)
    path.write_text(json.dumps(doc if result is None else result))


def set_in(keys: tuple, value) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return edit


def del_in(keys: tuple) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        node = doc
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return edit


class Fixtures:
    def __init__(self, root: Path, runner) -> None:
        self.root, self.runner = root, runner
        self.base = root / "base"
        self.cases = root / "cases"
        self.cases.mkdir()

    def build(self) -> None:
        code, out, err = self.runner(
            ["train", "-p", "demo", *TINY_ARGS, "-q", "-o", str(self.base)], self.root, 300, False
        )
        if code != 0:
            raise SystemExit(f"could not train the base run:\n{out}\n{err}")
        code, out, err = self.runner(
            ["analyze", str(self.base), "--only", "norms,fourier", "-q"], self.root, 300, False
        )
        if code != 0:
            raise SystemExit(f"could not analyze the base run:\n{out}\n{err}")
        step = sorted(int(p.stem) for p in (self.base / "steps").glob("*.safetensors"))[-1]
        self.last_step = step

        def pickles() -> None:
            import torch

            torch.save({"model": {}}, self.root / "empty_model.pt")
            torch.save([1, 2, 3], self.root / "list.pt")
            torch.save({"model": {"embed.W_E": torch.zeros(3, 3)}}, self.root / "wrong_model.pt")
            torch.save({"step": 1}, self.root / "not_a_state.pt")
            # a well-formed file in the layout of Nanda et al.'s code: p=7, one layer
            p, d, heads, d_head, d_mlp = 7, 8, 2, 4, 16
            model = {
                "embed.W_E": torch.zeros(d, p + 1),
                "pos_embed.W_pos": torch.zeros(3, d),
                "unembed.W_U": torch.zeros(d, p + 1),
                "blocks.0.attn.W_K": torch.zeros(heads, d_head, d),
                "blocks.0.attn.W_Q": torch.zeros(heads, d_head, d),
                "blocks.0.attn.W_V": torch.zeros(heads, d_head, d),
                "blocks.0.attn.W_O": torch.zeros(d, heads * d_head),
                "blocks.0.mlp.W_in": torch.zeros(d_mlp, d),
                "blocks.0.mlp.b_in": torch.zeros(d_mlp),
                "blocks.0.mlp.W_out": torch.zeros(d, d_mlp),
                "blocks.0.mlp.b_out": torch.zeros(d),
            }
            torch.save({"model": model}, self.root / "good_pm.pt")

        in_child(pickles)
        (self.root / "garbage.bin").write_bytes(b"\x00\xffgarbage" * 50)
        (self.root / "evil.pt").write_bytes(
            b"\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system"
            b"\x94\x93\x94\x8c\x07true #\x94\x85\x94R\x94."
        )

    def copy(self, name: str, mutate: Callable[[Path], None]) -> Callable[[Path], None]:
        """A setup that copies the base run to cases/<name> and damages it."""

        def setup(_: Path) -> None:
            dst = self.cases / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(self.base, dst)
            mutate(dst)

        return setup


# ----------------------------------------------------------------------------- the cases


def run_json_mutations() -> dict[str, Callable[[Path], None]]:
    def write(content: bytes):
        return lambda d: (d / "run.json").write_bytes(content)

    def edit(fn):
        return lambda d: edit_json(d / "run.json", fn)

    def to_dir(d: Path) -> None:
        (d / "run.json").unlink()
        (d / "run.json").mkdir()

    return {
        "list": write(b"[]"),
        "empty-object": write(b"{}"),
        "null": write(b"null"),
        "number": write(b"42"),
        "string": write(b'"run"'),
        "non-utf8": write(b'{"format_version": 1, \xff\xfe\x00 "config": {}}'),
        "empty-file": write(b""),
        "truncated": lambda d: (d / "run.json").write_bytes((d / "run.json").read_bytes()[:200]),
        "nested-deep": write(b"[" * 200000 + b"]" * 200000),
        "directory": to_dir,
        "format-2": edit(set_in(("format_version",), 2)),
        "format-str": edit(set_in(("format_version",), "1")),
        "format-0": edit(set_in(("format_version",), 0)),
        "format-null": edit(set_in(("format_version",), None)),
        "format-float": edit(set_in(("format_version",), 1.0)),
        "format-true": edit(set_in(("format_version",), True)),
        "no-config": edit(del_in(("config",))),
        "config-list": edit(set_in(("config",), [])),
        "config-null": edit(set_in(("config",), None)),
        "task-number": edit(set_in(("config", "task"), 5)),
        "task-name-int": edit(set_in(("config", "task", "name"), 7)),
        "task-name-unknown": edit(set_in(("config", "task", "name"), "mod_nope")),
        "task-p-str": edit(set_in(("config", "task", "p"), "x")),
        "task-p-negative": edit(set_in(("config", "task", "p"), -5)),
        "task-fraction-2": edit(set_in(("config", "task", "train_fraction"), 2.0)),
        "model-null": edit(set_in(("config", "model"), None)),
        "model-dmodel-str": edit(set_in(("config", "model", "d_model"), "big")),
        "model-dmodel-float": edit(set_in(("config", "model", "d_model"), 16.5)),
        "model-name-unknown": edit(set_in(("config", "model", "name"), "lstm")),
        "train-steps-neg": edit(set_in(("config", "train", "steps"), -1)),
        "train-lr-str": edit(set_in(("config", "train", "lr"), "fast")),
        "train-betas-str": edit(set_in(("config", "train", "betas"), "x")),
        "train-betas-long": edit(set_in(("config", "train", "betas"), [0.9, 0.9, 0.9])),
        "train-unknown-key": edit(set_in(("config", "train", "nope"), 1)),
        "config-unknown-section": edit(set_in(("config", "extra"), {})),
        "status-int": edit(set_in(("status",), 5)),
        "final-step-str": edit(set_in(("final_step",), "30")),
        "versions-int": edit(set_in(("versions",), 3)),
        "n-params-list": edit(set_in(("n_params",), [1])),
        "lr-nan": lambda d: (d / "run.json").write_text(
            (d / "run.json").read_text().replace('"lr": 0.003', '"lr": NaN')
        ),
    }


def metrics_mutations() -> dict[str, tuple[Callable[[Path], None], str]]:
    """name -> (mutation, expectation for readers)."""

    def middle(line: bytes):
        def mutate(d: Path) -> None:
            lines = (d / "metrics.jsonl").read_bytes().splitlines(keepends=True)
            (d / "metrics.jsonl").write_bytes(b"".join(lines[:2]) + line + b"".join(lines[2:]))

        return mutate

    def to_dir(d: Path) -> None:
        (d / "metrics.jsonl").unlink()
        (d / "metrics.jsonl").mkdir()

    return {
        "garbage-line": (middle(b"garbage\n"), "fail"),
        "number-line": (middle(b"42\n"), "fail"),
        "list-line": (middle(b"[1, 2]\n"), "fail"),
        "string-line": (middle(b'"x"\n'), "fail"),
        "step-str": (middle(b'{"step": "3", "train_acc": 0.5}\n'), "fail"),
        "no-step": (middle(b'{"train_acc": 0.5}\n'), "fail"),
        "step-negative": (middle(b'{"step": -1}\n'), "fail"),
        "value-str": (middle(b'{"step": 3, "train_acc": "high"}\n'), "fail"),
        "non-utf8": (middle(b'{"step": 3, "\xff": 1}\n'), "fail"),
        "nul-bytes": (middle(b"\x00\x00\x00\x00\n"), "fail"),
        "deep-line": (middle(b"[" * 100000 + b"]" * 100000 + b"\n"), "fail"),
        "directory": (to_dir, "fail"),
        "blank-line": (middle(b"\n"), "ok"),
        "torn-last-line": (
            lambda d: (d / "metrics.jsonl").write_bytes(
                (d / "metrics.jsonl").read_bytes() + b'{"step": 31, "train_l'
            ),
            "ok",
        ),
        "empty-file": (lambda d: (d / "metrics.jsonl").write_bytes(b""), "either"),
        "missing": (lambda d: (d / "metrics.jsonl").unlink(), "either"),
    }


def checkpoint_mutations(fx: Fixtures) -> dict[str, Callable[[Path], None]]:
    def last(content: bytes):
        return lambda d: (d / "steps" / f"{fx.last_step:08d}.safetensors").write_bytes(content)

    def first(content: bytes):
        return lambda d: (d / "steps" / "00000000.safetensors").write_bytes(content)

    def truncate(d: Path) -> None:
        f = d / "steps" / f"{fx.last_step:08d}.safetensors"
        f.write_bytes(f.read_bytes()[:-64])

    def steps_file(d: Path) -> None:
        shutil.rmtree(d / "steps")
        (d / "steps").write_text("x")

    return {
        "last-garbage": last(b"\x00\xffgarbage" * 30),
        "last-empty": last(b""),
        "last-truncated": truncate,
        "first-garbage": first(b"garbage" * 30),
        "last-no-tensors": last(raw_safetensors({})),
        "last-int-tensor": last(raw_safetensors({"x": ("I64", [2])})),
        "last-wrong-names": last(raw_safetensors({"nope.weight": ("F32", [4, 4])})),
        "last-huge-header": last(raw_safetensors({"x": ("F32", [1])}, header_len=2**62)),
        "steps-is-file": steps_file,
        "steps-missing": lambda d: shutil.rmtree(d / "steps"),
        "stray-file": lambda d: (d / "steps" / "notes.safetensors").write_bytes(b"x"),
    }


def state_mutations() -> dict[str, tuple[Callable[[Path], None], str]]:
    def write(name: str, content: bytes):
        return lambda d: (d / "state" / name).write_bytes(content)

    def legacy(src: str):
        def mutate(d: Path) -> None:
            for f in (d / "state").iterdir():
                f.unlink()
            shutil.copy(d.parent.parent / src, d / "state" / "latest.pt")

        return mutate

    return {
        "json-garbage": (write("latest.json", b"garbage"), "fail"),
        "json-list": (write("latest.json", b"[]"), "fail"),
        "json-version-99": (
            lambda d: edit_json(d / "state" / "latest.json", set_in(("version",), 99)),
            "fail",
        ),
        "json-non-utf8": (write("latest.json", b"\xff\xfe"), "fail"),
        "tensors-garbage": (write("latest.safetensors", b"garbage" * 10), "fail"),
        "tensors-missing": (lambda d: (d / "state" / "latest.safetensors").unlink(), "fail"),
        "state-missing": (lambda d: shutil.rmtree(d / "state"), "fail"),
        "legacy-garbage": (legacy("garbage.bin"), "fail"),
        "legacy-evil-pickle": (legacy("evil.pt"), "fail"),
        "legacy-not-a-state": (legacy("not_a_state.pt"), "fail"),
        "stale-tmp-files": (
            lambda d: [
                (d / n).write_bytes(b"partial")
                for n in (".run.json.tmp1", "steps/.00000030.safetensors.tmp1", "state/.x.tmp1")
            ],
            "ok",
        ),
    }


def build_cases(fx: Fixtures, work: Path) -> list[Case]:
    C: list[Case] = []
    base = str(fx.base)
    no_ans = lambda out: "unreadable" in out  # noqa: E731

    # --- run.json × readers and writers
    for name, mutate in run_json_mutations().items():
        d = str(fx.cases / f"runjson-{name}")
        setup = fx.copy(f"runjson-{name}", mutate)
        C.append(Case(f"run.json {name}: report", ["report", d], area="report", setup=setup))
        C.append(
            Case(
                f"run.json {name}: analyze",
                ["analyze", d, "--only", "norms", "-q"],
                area="analysis",
                setup=setup,
            )
        )
        C.append(Case(f"run.json {name}: ls", ["ls", d], "ok", "ls", setup, check=no_ans))
        C.append(
            Case(
                f"run.json {name}: train --resume",
                ["train", "-p", "demo", *TINY_ARGS, "-q", "--resume", "-o", d],
                setup=setup,
            )
        )

    # --- metrics.jsonl
    for name, (mutate, expect) in metrics_mutations().items():
        d = str(fx.cases / f"metrics-{name}")
        setup = fx.copy(f"metrics-{name}", mutate)
        ls_check = no_ans if expect == "fail" else None
        C.append(Case(f"metrics {name}: report", ["report", d], expect, "report", setup))
        C.append(Case(f"metrics {name}: ls", ["ls", d], "ok", "ls", setup, check=ls_check))
        C.append(
            Case(
                f"metrics {name}: train --resume (finished: nothing to do)",
                ["train", "-p", "demo", *TINY_ARGS, "-q", "--resume", "-o", d],
                "either",
                setup=setup,
            )
        )
        C.append(
            Case(
                f"metrics {name}: train --resume --set train.steps=40",
                [
                    "train",
                    "-p",
                    "demo",
                    *TINY_ARGS,
                    "--set",
                    "train.steps=40",
                    "-q",
                    "--resume",
                    "-o",
                    d,
                ],
                expect,
                setup=setup,
            )
        )

    # --- checkpoints
    for name, mutate in checkpoint_mutations(fx).items():
        d = str(fx.cases / f"ckpt-{name}")
        setup = fx.copy(f"ckpt-{name}", mutate)
        expect = "ok" if name == "stray-file" else "fail"
        C.append(
            Case(
                f"checkpoint {name}: analyze --force",
                ["analyze", d, "--only", "norms", "--force", "-q"],
                expect,
                "analysis",
                setup,
            )
        )
        C.append(
            Case(
                f"checkpoint {name}: analyze fourier --force",
                ["analyze", d, "--only", "fourier", "--force", "-q"],
                expect,
                "analysis",
                setup,
            )
        )
        C.append(Case(f"checkpoint {name}: report", ["report", d], "either", "report", setup))

    # --- analysis cache
    def cache(kind: str):
        def mutate(d: Path) -> None:
            for f in (d / "analysis").iterdir():
                if f.is_file():
                    f.write_bytes(b"garbage" * 20 if kind == "garbage" else b"")

        return mutate

    for kind in ("garbage", "empty"):
        d = str(fx.cases / f"cache-{kind}")
        setup = fx.copy(f"cache-{kind}", cache(kind))
        C.append(
            Case(
                f"analysis cache {kind}: analyze",
                ["analyze", d, "--only", "norms", "-q"],
                "either",
                "analysis",
                setup,
            )
        )
        C.append(
            Case(
                f"analysis cache {kind}: report --no-recompute",
                ["report", d, "--no-recompute"],
                "either",
                "report",
                setup,
            )
        )

    # --- resume state
    for name, (mutate, expect) in state_mutations().items():
        d = str(fx.cases / f"state-{name}")
        C.append(
            Case(
                f"state {name}: train --resume --set train.steps=40",
                [
                    "train",
                    "-p",
                    "demo",
                    *TINY_ARGS,
                    "--set",
                    "train.steps=40",
                    "-q",
                    "--resume",
                    "-o",
                    d,
                ],
                expect,
                setup=fx.copy(f"state-{name}", mutate),
            )
        )

    # --- bad --set values
    bad_sets = {
        "train.steps=-1": "fail",
        "train.steps=0": "fail",
        "train.steps=abc": "fail",
        "train.steps=1e99": "fail",
        "train.steps=1.5": "fail",
        "train.steps=true": "fail",
        "train.steps=none": "fail",
        "train.steps=": "fail",
        "train.lr=-1": "fail",
        "train.lr=nan": "fail",
        "train.lr=inf": "fail",
        "train.lr=abc": "fail",
        "train.batch_size=0": "fail",
        "train.batch_size=-5": "fail",
        "task.p=1": "fail",
        "task.p=0": "fail",
        "task.p=abc": "fail",
        "task.p=1000000007": "fail",
        "task.train_fraction=0": "fail",
        "task.train_fraction=1.5": "fail",
        "task.train_fraction=nan": "fail",
        "model.d_model=0": "fail",
        "model.d_model=-1": "fail",
        "model.n_heads=0": "fail",
        "model.act_fn=foo": "fail",
        "model.name=foo": "fail",
        "train.optimizer=foo": "fail",
        "train.device=tpu": "fail",
        "train.dtype=float8": "fail",
        "train.loss=foo": "fail",
        "train.eval_every=0": "fail",
        "train.checkpoint_every=0": "fail",
        "train.seed=abc": "fail",
        "nosection.x=1": "fail",
        "train.nosuchkey=1": "fail",
        "train.steps": "fail",
        "=5": "fail",
        "train..steps=5": "fail",
        "task.name=foo": "fail",
        "train.init_state=/nonexistent/x.safetensors": "fail",
        "train.mask=/nonexistent/x.safetensors": "fail",
        f"train.init_state={work / 'garbage.bin'}": "fail",
        f"train.mask={work / 'garbage.bin'}": "fail",
        "train.grokfast=foo": "fail",
        "train.betas=[1,2,3]": "fail",
        "train.betas=abc": "fail",
        "train.weight_decay=-1": "fail",
        "train.warmup_steps=-1": "fail",
        "train.early_stop_acc=2": "fail",
        "train.early_stop_patience=0": "fail",
        "model.init_scale=0": "either",
        "model.init_scale=-1": "either",
        "train.checkpoint_dtype=int8": "fail",
        "train.merge_embedding_at=-3": "fail",
        "train.steps=99999999999999999999": "fail",
        "model.n_layers=1000000": "fail",
        "model.d_model=100000000": "fail",
        "task.p=11\u00a0": "either",
        "train.lr=1e-3;rm -rf /": "fail",
        "train.seed=-1": "either",
        "model.d_mlp=1.5": "fail",
        "train.device=cuda": "fail",
    }
    for i, (value, expect) in enumerate(bad_sets.items()):
        C.append(
            Case(
                f"--set {value!r}",
                [
                    "train",
                    "-p",
                    "demo",
                    *TINY_ARGS,
                    "--set",
                    value,
                    "-q",
                    "-o",
                    str(work / "sets" / f"s{i}"),
                ],
                expect,
                "config",
            )
        )

    # --- presets and config files
    cfgs = work / "configs"
    cfgs.mkdir()
    files = {
        "empty.toml": b"",
        "garbage.toml": b"[[[ not toml",
        "nonutf8.toml": b'name = "\xff\xfe"\n',
        "list.json": b"[]",
        "bad-types.json": b'{"task": {"name": "mod_add", "p": "x"}}',
        "unknown-section.toml": b"[nope]\nx = 1\n",
        "deep.json": b"[" * 100000 + b"]" * 100000,
        "nul.toml": b"\x00\x00\x00",
        "config.yaml": b"task: {}\n",
        "number.json": b"42",
        "task-list.toml": b"task = [1, 2]\n",
    }
    for fname, content in files.items():
        (cfgs / fname).write_bytes(content)
        C.append(
            Case(
                f"--config {fname}",
                ["train", "--config", str(cfgs / fname), *TINY_ARGS, "-q", "-o"]
                + [str(work / "c" / fname)],
                "either" if fname == "empty.toml" else "fail",  # empty: the defaults
                area="config",
            )
        )
    (cfgs / "adir").mkdir()
    C.append(
        Case(
            "--seeds dup",
            ["train", "-p", "demo", *TINY_ARGS, "--seeds", "1,1", "-q", "-o", str(work / "sd")],
            "either",  # the same seed twice may be read as once
            area="config",
        )
    )
    for label, args in {
        "--config missing": ["--config", str(cfgs / "missing.toml")],
        "--config dir": ["--config", str(cfgs / "adir")],
        "--preset nope": ["-p", "nope"],
        "--preset empty": ["-p", ""],
        "--preset path": ["-p", "../../../etc/passwd"],
        "--preset demo.toml": ["-p", "demo.toml"],
        "preset and config": ["-p", "demo", "--config", str(cfgs / "empty.toml")],
        "neither preset nor config": [],
        "--seeds bad": ["-p", "demo", *TINY_ARGS, "--seeds", "3-1"],
        "--seeds empty": ["-p", "demo", *TINY_ARGS, "--seeds", ""],
        "--seeds words": ["-p", "demo", *TINY_ARGS, "--seeds", "a-b"],
    }.items():
        C.append(
            Case(
                label,
                ["train", *args, "-q", "-o", str(work / "p" / label.replace(" ", "_"))],
                area="config",
            )
        )

    # --- bad --out paths
    a_file = work / "a_file"
    a_file.write_text("x")
    ro = work / "readonly"
    ro.mkdir(mode=0o755)
    link_loop = work / "loop"
    os.symlink(link_loop, link_loop)
    outs = {
        "an existing file": (str(a_file), False),
        "under a file": (str(a_file / "sub"), False),
        "name too long": (str(work / ("x" * 300)), False),
        "path too long": (str(work / "/".join(["y" * 200] * 25)), False),
        "unwritable folder": (str(ro / "run"), True),
        "unwritable existing folder": (str(ro), True),
        "/proc": ("/proc/self/run", False),
        "/dev/null": ("/dev/null", False),
        "symlink loop": (str(link_loop), False),
        "a non-run folder": (str(work / "configs"), False),
        "an existing run without --resume": (base, False),
    }
    for label, (path, nobody) in outs.items():
        C.append(
            Case(
                f"--out {label}",
                ["train", "-p", "demo", *TINY_ARGS, "-q", "-o", path],
                area="train",
                nobody=nobody,
            )
        )
    C.append(
        Case(
            "--resume --overwrite",
            ["train", "-p", "demo", *TINY_ARGS, "--resume", "--overwrite", "-o", base],
        )
    )
    C.append(
        Case(
            "--resume with a different config",
            ["train", "-p", "demo", *TINY_ARGS, "--set", "task.p=13", "--resume", "-o", base],
        )
    )
    C.append(
        Case(
            "--resume --seeds on a file",
            ["train", "-p", "demo", *TINY_ARGS, "--seeds", "0-1", "--resume", "-o", str(a_file)],
        )
    )
    C.append(
        Case(
            "--overwrite a corrupt run",
            [
                "train",
                "-p",
                "demo",
                *TINY_ARGS,
                "-q",
                "--overwrite",
                "-o",
                str(fx.cases / "ow-corrupt"),
            ],
            "ok",
            setup=fx.copy("ow-corrupt", lambda d: (d / "run.json").write_bytes(b"[]")),
        )
    )

    # --- readers on bad folders
    for label, path in {
        "missing": str(work / "missing"),
        "a file": str(a_file),
        "an empty folder": str(work / "configs" / "adir"),
        "a non-run folder": str(work / "configs"),
        "name too long": str(work / ("z" * 300)),
    }.items():
        C.append(Case(f"report {label}", ["report", path], area="report"))
        C.append(Case(f"analyze {label}", ["analyze", path, "-q"], area="analysis"))
    C.append(Case("ls a file", ["ls", str(a_file)], area="ls"))
    C.append(Case("ls missing", ["ls", str(work / "missing")], area="ls"))
    C.append(Case("ls name too long", ["ls", str(work / ("z" * 300))], area="ls"))
    C.append(
        Case(
            "ls unreadable folder",
            ["ls", str(work / "noperm")],
            "either",
            "ls",
            setup=lambda _: (work / "noperm").mkdir(mode=0o700, exist_ok=True),
            nobody=True,
        )
    )
    C.append(Case("analyze --only nope", ["analyze", base, "--only", "nope"], area="analysis"))
    C.append(Case("analyze --only ','", ["analyze", base, "--only", ","], "either", "analysis"))
    C.append(
        Case(
            "analyze --device tpu",
            ["analyze", base, "--only", "norms", "--device", "tpu"],
            area="analysis",
        )
    )
    C.append(Case("report --threshold 7", ["report", base, "--threshold", "7"], area="report"))
    C.append(Case("report --threshold nan", ["report", base, "--threshold", "nan"], area="report"))
    C.append(
        Case("report -o a folder", ["report", base, "-o", str(work / "configs")], area="report")
    )
    C.append(
        Case(
            "report -o under a file", ["report", base, "-o", str(a_file / "r.html")], area="report"
        )
    )

    # --- import
    imp = work / "imports"
    for label, args in {
        "unknown kind": ["nope", str(work / "list.pt")],
        "missing file": ["progress-measures", str(work / "missing.pt")],
        "garbage file": ["progress-measures", str(work / "garbage.bin")],
        "a folder": ["progress-measures", str(work / "configs")],
        "a list pickle": ["progress-measures", str(work / "list.pt")],
        "no weights": ["progress-measures", str(work / "empty_model.pt")],
        "wrong weights": ["progress-measures", str(work / "wrong_model.pt")],
        "evil pickle": ["progress-measures", str(work / "evil.pt")],
        "tl-demo garbage": ["tl-demo", str(work / "garbage.bin")],
        "tl-demo list": ["tl-demo", str(work / "list.pt")],
        "p=1": ["progress-measures", str(work / "wrong_model.pt"), "--p", "1"],
        "fn=nope": ["progress-measures", str(work / "wrong_model.pt"), "--fn", "nope"],
        "frac-train 5": ["progress-measures", str(work / "wrong_model.pt"), "--frac-train", "5"],
    }.items():
        C.append(
            Case(
                f"import {label}",
                ["import", *args, "-o", str(imp / label.replace(" ", "_"))],
                area="import",
            )
        )
    C.append(
        Case(
            "import a good file (control)",
            ["import", "progress-measures", str(work / "good_pm.pt"), "-o", str(imp / "good")],
            "ok",
            "import",
        )
    )
    C.append(
        Case(
            "import --out an existing run",
            ["import", "progress-measures", str(work / "good_pm.pt"), "-o", base],
            area="import",
        )
    )
    C.append(
        Case(
            "import --out a file",
            ["import", "progress-measures", str(work / "good_pm.pt"), "-o", str(a_file)],
            area="import",
        )
    )

    # --- other commands, briefly
    C.append(
        Case(
            "sweep bad grid",
            ["sweep", "-p", "demo", "--grid", "train.lr", "-o", str(work / "sw1")],
            area="sweep",
        )
    )
    C.append(
        Case(
            "sweep bad seeds",
            ["sweep", "-p", "demo", "--seeds", "x", "-o", str(work / "sw2")],
            area="sweep",
        )
    )
    C.append(
        Case(
            "sweep grid unknown key",
            ["sweep", "-p", "demo", "--grid", "train.nope=1,2", "-o", str(work / "sw3")],
            area="sweep",
        )
    )
    C.append(
        Case(
            "sweep out a file",
            ["sweep", "-p", "demo", "--grid", "train.lr=1,2", "-o", str(a_file)],
            area="sweep",
        )
    )
    C.append(Case("run bad preset", ["run", "-p", "nope", "-o", str(work / "r1")], area="run"))
    C.append(
        Case(
            "run bad --set",
            ["run", "-p", "demo", "--set", "train.steps=-1", "-o", str(work / "r2")],
            area="run",
        )
    )
    C.append(
        Case("run out a file", ["run", "-p", "demo", *TINY_ARGS, "-o", str(a_file)], area="run")
    )
    C.append(Case("tickets on a missing run", ["tickets", str(work / "missing")], area="tickets"))
    C.append(Case("tickets bad sparsity", ["tickets", base, "--sparsity", "2"], area="tickets"))
    C.append(
        Case(
            "tickets corrupt run",
            ["tickets", str(fx.cases / "runjson-list")],
            area="tickets",
            setup=fx.copy("runjson-list", lambda d: (d / "run.json").write_bytes(b"[]")),
        )
    )
    return C


def concurrent_cases(work: Path, fx: Fixtures) -> tuple[list[Case], Callable, Callable]:
    """Cases run while a real `grokinterp train` subprocess writes work/live."""
    live = work / "live"
    writer: dict[str, subprocess.Popen] = {}

    def start() -> int | None:
        writer["p"] = subprocess.Popen(
            [
                str(GROKINTERP),
                "train",
                "-p",
                "demo",
                *LIVE_ARGS,
                "--set",
                "train.steps=10000000",
                "-q",
                "-o",
                str(live),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not (live / "state" / "latest.json").is_file():
            if writer["p"].poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return writer["p"].pid

    def kill() -> None:
        writer["p"].send_signal(signal.SIGKILL)
        writer["p"].wait()

    def busy(out: str) -> bool:
        return "being written by another process" in out

    ls_ok = lambda out: "live" in out  # noqa: E731
    L = str(live)
    cases = [
        Case("live: train (no flags)", ["train", "-p", "demo", *LIVE_ARGS, "-q", "-o", L]),
        Case(
            "live: train --resume", ["train", "-p", "demo", *LIVE_ARGS, "--resume", "-q", "-o", L]
        ),
        Case(
            "live: train --overwrite",
            ["train", "-p", "demo", *LIVE_ARGS, "--overwrite", "-q", "-o", L],
        ),
        Case(
            "live: train --seeds --overwrite into its parent",
            [
                "train",
                "-p",
                "demo",
                *TINY_ARGS,
                "--seeds",
                "0",
                "--overwrite",
                "-q",
                "-o",
                str(work / "live-seeds"),
            ],
            "ok",
        ),
        Case("live: run", ["run", "-p", "demo", *LIVE_ARGS, "-q", "-o", L], area="run"),
        Case(
            "live: import --overwrite --out",
            ["import", "progress-measures", str(work / "good_pm.pt"), "--overwrite", "-o", L],
            area="import",
        ),
        Case("live: ls", ["ls", L], "ok", "ls", check=ls_ok),
        Case("live: analyze", ["analyze", L, "--only", "norms", "-q"], "ok", "analysis"),
        Case("live: report", ["report", L], "ok", "report"),
    ]
    for c in cases:
        if c.expect == "fail":
            c.check = busy
    after = [
        Case(
            "after kill -9: train --resume",
            [
                "train",
                "-p",
                "demo",
                *LIVE_ARGS,
                "--set",
                "train.steps=60",
                "--resume",
                "-q",
                "-o",
                L,
            ],
            "ok",
        ),
        Case("after kill -9: ls", ["ls", L], "ok", "ls", check=ls_ok),
    ]
    return cases + after, start, kill


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default=None, help="only cases whose name contains this")
    ap.add_argument("--subprocess", action="store_true", help="a fresh interpreter per case")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", type=Path, default=None, help="write every outcome here")
    opts = ap.parse_args()

    runner = run_subprocess if opts.subprocess else run_forked
    if not opts.subprocess:  # warm the imports once; children inherit them
        import grokinterp.analysis  # noqa: F401
        import grokinterp.cli  # noqa: F401
        import grokinterp.report.html  # noqa: F401
        import grokinterp.store.importers  # noqa: F401
        import grokinterp.training  # noqa: F401

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="grokinterp-campaign-"))
    os.chmod(work, 0o755)
    try:
        fx = Fixtures(work, runner)
        fx.build()
        cases = build_cases(fx, work)
        live_cases, start_writer, kill_writer = concurrent_cases(work, fx)
        if opts.k:
            cases = [c for c in cases if opts.k in c.name]
            live_cases = [c for c in live_cases if opts.k in c.name]
        outcomes: list[Outcome] = []

        def run(c: Case, pid: int | None = None) -> None:
            if c.setup is not None:
                c.setup(work)
            start = time.monotonic()
            code, out, err = runner(c.args, work, c.timeout, c.nobody)
            o = Outcome(c, code, out, err, time.monotonic() - start)
            o.kind = classify(c, code, out, err)
            if o.kind == "clean" and c.check is not None and not c.check(out + err):
                o.kind = "wrong-error"
            if pid is not None and o.kind == "clean" and f"pid {pid}" not in err:
                o.kind = "wrong-error"
            outcomes.append(o)
            mark = "." if o.kind in ("clean", "ok") else "!"
            print(f"{mark} {o.seconds:5.1f}s {o.kind:10s} {c.name}", flush=True)

        for c in cases:
            run(c)
        if live_cases:
            pid = start_writer()
            if pid is None:
                print("! the live writer (a real `grokinterp train`) did not start: skipped")
                live_cases = []
            try:
                for c in live_cases:
                    if c.name.startswith("after"):
                        continue
                    run(c, pid if c.expect == "fail" else None)
            finally:
                kill_writer()
            for c in live_cases:
                if c.name.startswith("after"):
                    run(c)
    finally:
        if opts.keep:
            print(f"work folder kept: {work}")
        else:
            for p in work.rglob("*"):  # the nobody cases may have left 0700 folders
                if p.is_dir() and not p.is_symlink():
                    os.chmod(p, 0o755)
            shutil.rmtree(work, ignore_errors=True)

    counts = Counter(o.kind for o in outcomes)
    bad = [o for o in outcomes if o.kind not in ("clean", "ok")]
    print("\n=== not clean ===")
    for o in bad:
        tail = (o.err.strip().splitlines() or o.out.strip().splitlines() or [""])[-1][:240]
        print(f"[{o.kind}] ({o.case.area}) {o.case.name}: exit {o.code}: {tail}")
    expected_fail = sum(o.case.expect == "fail" for o in outcomes)
    print(
        f"\ntried {len(outcomes)} ({expected_fail} that must fail) in "
        f"{time.monotonic() - t0:.0f} s: clean {counts['clean']}, accepted as they should "
        f"{counts['ok']}, traceback {counts['traceback']}, silent {counts['silent']}, "
        f"messy {counts['messy']}, wrong-error {counts['wrong-error']}, refused "
        f"{counts['refused']}, timeout {counts['timeout']}"
    )
    by_area = Counter(o.case.area for o in bad)
    if by_area:
        print("not clean by area: " + ", ".join(f"{a} {n}" for a, n in by_area.most_common()))
    if opts.json:
        opts.json.write_text(
            json.dumps(
                [
                    {
                        "name": o.case.name,
                        "area": o.case.area,
                        "expect": o.case.expect,
                        "kind": o.kind,
                        "code": o.code,
                        "stderr": o.err[-2000:],
                        "stdout": o.out[-2000:],
                        "seconds": round(o.seconds, 2),
                    }
                    for o in outcomes
                ],
                indent=1,
            )
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
