"""Benchmarks of the training engines (issue 9). Every figure is a ratio against a baseline
measured in the same process, interleaved round by round; medians are reported.

    python benchmarks/bench_train.py step  [--device cpu|cuda] [--presets demo nanda2023]
    python benchmarks/bench_train.py grok  [--device cuda]      # wall-clock until it grokked
    python benchmarks/bench_train.py seeds [--device cuda] [--seeds 1 8 64]
    python benchmarks/bench_train.py ckpt  [--device cpu|cuda]  # dense checkpointing overhead
    python benchmarks/bench_train.py analysis [--run checkpoints/demo]

Add ``--json FILE`` to save the numbers. Baselines:

- ``plain``: the loop a user writes (Nanda et al. 2023's notebook, less its per-step
  ``loss.item()``): the hooked model on all positions, ``W_E[x]`` gather, default
  ``torch.optim.AdamW``, the same warm-up through ``LambdaLR``, evaluation every 100 steps.
- ``eager``: grokinterp's eager trainer (``train.engine = "eager"``: last position only,
  foreach AdamW).
- ``fast``: the fast engine (:mod:`grokinterp.training.engines.fast`: token tables, fused AdamW,
  on CUDA one CUDA graph per step), and variants of it.

``eager`` and ``fast`` are :class:`grokinterp.training.group.SeedGroup` steps (the training loop's
step without files); ``train()`` runs use ``train.threads = 0`` (the ``--threads`` set here).

All three start from the same initial weights (``train.seed``) and the same split.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from grokinterp.analysis.curves import DEFAULT_THRESHOLD, grok_times
from grokinterp.config import RunConfig, apply_overrides, load_preset
from grokinterp.models.functional import matmul_precision
from grokinterp.store import Run
from grokinterp.store import writer as store_writer
from grokinterp.tasks import make_task
from grokinterp.training import train, train_seeds
from grokinterp.training.group import SeedGroup, initial_model
from grokinterp.training.optim import warmup_factor
from grokinterp.training.seeds import seed_config

OUT = Path(tempfile.gettempdir()) / "grokinterp_bench"
LAST_HOST_SECONDS: dict[str, float] = {}  # SeedGroup.host_seconds of the last train() call

_close = SeedGroup.close


def _record_close(self, quiet: bool = False) -> None:  # training-thread timings of each run
    _close(self, quiet)
    LAST_HOST_SECONDS.clear()
    LAST_HOST_SECONDS.update(self.host_seconds)


SeedGroup.close = _record_close


# ----------------------------------------------------------------------------- helpers


def machine() -> dict[str, str]:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_count": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def config_for(preset: str, device: str, extra: list[str] | None = None) -> RunConfig:
    over = [f"train.device={device}", "train.threads=0", *(extra or [])]
    return apply_overrides(load_preset(preset), over)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class PlainLoop:
    """The plain eager loop a user would write (see the module docstring)."""

    def __init__(self, cfg: RunConfig):
        self.device = torch.device(cfg.train.device)
        self.task = make_task(cfg.task.name, **cfg.task.params)
        self.model = initial_model(cfg, self.task).to(self.device)  # same init as grokinterp
        tc = cfg.train
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: warmup_factor(s, tc.warmup_steps)
        )
        self.x, self.y = self.task.x_train.to(self.device), self.task.y_train.to(self.device)
        self.x_test, self.y_test = (
            self.task.x_test.to(self.device),
            self.task.y_test.to(self.device),
        )
        self.step = 0

    def train_step(self) -> None:
        loss = F.cross_entropy(self.model(self.x)[:, -1], self.y)  # TL's logits[:, -1]
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        self.step += 1

    @torch.no_grad()
    def test_acc(self) -> float:
        return (self.model(self.x_test)[:, -1].argmax(-1) == self.y_test).float().mean().item()


def interleaved(
    fns: dict[str, Callable[[], None]], device: str, steps: int, rounds: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                f()
            sync(device)
            times[k].append((time.perf_counter() - start) / steps)
    return {k: statistics.median(v) for k, v in times.items()} | {
        f"{k}_spread": (max(v) - min(v)) / statistics.median(v) for k, v in times.items()
    }


def tf32_call(fn: Callable[[], None]) -> None:
    with matmul_precision(True):
        fn()


def fast_variant(cfg: RunConfig, **kw) -> Callable[[], None]:
    """The fast engine's step with options: graph=False, gemm_backward=bool, tf32=True."""
    if kw.get("tf32"):
        cfg = apply_overrides(cfg, ["train.tf32=true"])
    g = SeedGroup([cfg], "fast")
    assert g.engine.name == "fast", "fast forward rejected"
    if "gemm_backward" in kw:
        g.engine.fast.gemm_backward = kw["gemm_backward"]
        g.engine._build_train_loss()
    if kw.get("graph") is False:
        g.runner.use_graph = False
        g.runner.stream = None
    return g.train_step


# ----------------------------------------------------------------------------- (a)/(b) steps


def bench_step(args) -> dict:
    results = {}
    for preset in args.presets:
        cfg = config_for(preset, args.device)
        plain, eager = PlainLoop(cfg), SeedGroup([cfg], "eager")
        fns = {"plain": plain.train_step, "eager": eager.train_step, "fast": fast_variant(cfg)}
        if args.device == "cuda":
            fns["fast_no_graph"] = fast_variant(cfg, graph=False)
            fns["fast_index_add"] = fast_variant(cfg, gemm_backward=False)
            fns["fast_tf32"] = fast_variant(cfg, tf32=True)
            fns["plain_tf32"] = lambda p=plain: tf32_call(p.train_step)
        else:
            fns["fast_gemm_backward"] = fast_variant(cfg, gemm_backward=True)
        steps = args.steps or (50 if args.device == "cuda" else (10 if preset == "demo" else 3))
        r = interleaved(fns, args.device, steps, args.rounds, warmup=max(12, steps // 2))
        r |= {f"speedup_vs_plain_{k}": r["plain"] / r[k] for k in fns if k != "plain"}
        r |= {f"speedup_vs_eager_{k}": r["eager"] / r[k] for k in fns if k.startswith("fast")}
        results[preset] = r
        print(f"\n[{preset} on {args.device}] ms/step (median of {args.rounds} rounds × {steps})")
        for k in fns:
            print(
                f"  {k:20s} {1e3 * r[k]:9.3f} ms   ×{r['plain'] / r[k]:6.2f} vs plain"
                f"   spread {100 * r[k + '_spread']:.0f}%"
            )
    if args.compile and args.device == "cuda":
        try:
            results["compile"] = bench_compile(args)
        except Exception as e:  # noqa: BLE001  (an optional experiment; report and go on)
            print(f"[compile] failed: {type(e).__name__}: {str(e)[:300]}")
            results["compile"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return results


def bench_compile(args) -> dict:
    """Does ``train.compile`` (torch.compile of the training loss) pay on top of the CUDA graph?"""
    fns, compile_s = {}, {}
    for tag, extra in {
        "graph": [],
        "graph+compile": ["train.compile=true"],
        "graph+tf32": ["train.tf32=true"],
        "graph+tf32+compile": ["train.tf32=true", "train.compile=true"],
    }.items():
        t = SeedGroup([config_for("nanda2023", "cuda", extra)], "fast")
        start = time.perf_counter()
        for _ in range(15):  # (compile +) warm-up + capture
            t.train_step()
        torch.cuda.synchronize()
        compile_s[tag] = time.perf_counter() - start
        fns[tag] = t.train_step
    r = interleaved(fns, "cuda", 50, 5, 15)
    r["first_15_steps_s"] = compile_s
    print("\n[compile, nanda2023] ms/step (first 15 steps incl. compile and capture)")
    for k in fns:
        print(f"  {k:20s} {1e3 * r[k]:8.3f} ms  ({compile_s[k]:.1f} s)")
    return r


# ----------------------------------------------------------------------------- (b) grokking


def bench_grok(args) -> dict:
    """Wall-clock until the run grokked — test accuracy ≥ ``DEFAULT_THRESHOLD`` (95 %; the
    ``generalize_step`` of :func:`grokinterp.analysis.curves.grok_times`; 99 % before issue 14),
    evaluated every 100 steps — with the same seed, split and initial weights."""
    level = DEFAULT_THRESHOLD
    cfg = config_for("nanda2023", args.device)
    res: dict = {}
    if args.device == "cuda":  # CUDA context and cuBLAS handles: paid before either clock starts
        (torch.randn(64, 64, device="cuda") @ torch.randn(64, 64, device="cuda")).sum().item()
    # the fast engine through the public API: with its dense checkpoints (as a user runs it),
    # and with checkpoints only at 0 and the end (the same work as the plain loop)
    fast_cfg = apply_overrides(
        cfg,
        [
            "train.engine=fast",
            f"train.early_stop_acc={level}",
            "train.early_stop_patience=1",
            f"train.steps={args.max_steps}",
        ],
    )
    no_ckpt = ["train.checkpoint_every=1000000", "train.checkpoint_log_steps=0"]
    variants = {
        "fast": [],
        "fast_no_ckpt": no_ckpt,
        "fast_tf32": ["train.tf32=true"],
        "fast_tf32_no_ckpt": ["train.tf32=true", *no_ckpt],
    }
    if args.device != "cuda" or not args.grok_tf32:
        variants = {k: v for k, v in variants.items() if "tf32" not in k}
    out = OUT / "grok_fast"
    for name, extra in variants.items():
        shutil.rmtree(out, ignore_errors=True)
        sync(args.device)
        start = time.perf_counter()
        run = train(apply_overrides(fast_cfg, extra), out, progress=False)
        sync(args.device)
        res[f"{name}_s"] = time.perf_counter() - start
        res[f"{name}_step"] = grok_times(run.metrics, level).generalize_step
        res[f"{name}_checkpoints"] = len(run.steps)
        print(
            f"{name:18s}: {level:.0%} test acc at step {res[f'{name}_step']} after "
            f"{res[f'{name}_s']:.2f} s (all in, {len(run.steps)} checkpoints)"
        )
    for name in args.grok_baselines:
        sync(args.device)
        start = time.perf_counter()
        if name == "plain":
            t = PlainLoop(cfg)
            acc_at = t.test_acc
        else:
            t = SeedGroup([cfg], "eager")
            acc_at = lambda t=t: t.evaluate()[0]["test_acc"]  # noqa: E731
        step = None
        while t.step < args.max_steps:
            t.train_step()
            if t.step % cfg.train.eval_every == 0 and acc_at() >= level:
                step = t.step
                break
        sync(args.device)
        res[f"{name}_s"] = time.perf_counter() - start
        res[f"{name}_step"] = step
        print(f"{name:18s}: {level:.0%} test acc at step {step} after {res[name + '_s']:.2f} s")
        for v in variants:
            res[f"time_ratio_{name}_over_{v}"] = res[f"{name}_s"] / res[f"{v}_s"]
            res[f"step_ratio_{v}_over_{name}"] = (res[f"{v}_step"] or 0) / (step or float("nan"))
            print(
                f"    {v:18s} is ×{res[f'time_ratio_{name}_over_{v}']:.2f} sooner; grokking "
                f"step ratio {res[f'step_ratio_{v}_over_{name}']:.3f}"
            )
    return res


# ----------------------------------------------------------------------------- (c) seeds


def bench_seeds(args) -> dict:
    """Step time of S stacked seeds vs one seed (fast engine both)."""
    res = {}
    modes = [(tf32, comp) for comp in args.compile_modes for tf32 in args.tf32_modes]
    for tf32, comp in modes:
        extra = (["train.tf32=true"] if tf32 else []) + (["train.compile=true"] if comp else [])
        cfg = config_for(args.seed_preset, args.device, extra)
        fns = {}
        for s in args.seeds:
            cfgs = [seed_config(cfg, k) for k in range(s)]
            t = SeedGroup(cfgs, "fast")
            fns[f"S={s}"] = t.train_step
        r = interleaved(fns, args.device, args.steps or 30, args.rounds, warmup=15)
        one = r[f"S={args.seeds[0]}"] / args.seeds[0]
        tag = ("tf32" if tf32 else "fp32") + ("+compile" if comp else "")
        print(f"\n[{args.seed_preset} seeds on {args.device}, {tag}] ms per step of all S seeds")
        for s in args.seeds:
            t_s = r[f"S={s}"]
            r[f"S={s}_over_S=1"] = t_s / r[f"S={args.seeds[0]}"]
            r[f"S={s}_throughput_vs_sequential"] = s * one / t_s
            print(
                f"  S={s:3d} {1e3 * t_s:9.3f} ms  = ×{r[f'S={s}_over_S=1']:.2f} the time of one seed;"
                f" throughput ×{r[f'S={s}_throughput_vs_sequential']:.1f} vs S sequential runs"
            )
        res[tag] = r
    if args.end_to_end:
        res["end_to_end"] = seeds_end_to_end(args)
    return res


def seeds_end_to_end(args) -> dict:
    """``train_seeds`` of S seeds (dense checkpoints, all files) vs ``train`` of one seed."""
    s = max(args.seeds)
    cfg = config_for(
        args.seed_preset,
        args.device,
        [f"train.steps={args.e2e_steps}", "train.early_stop_acc=none", *args.e2e_set],
    )
    shutil.rmtree(OUT / "e2e", ignore_errors=True)
    sync(args.device)
    start = time.perf_counter()
    train(apply_overrides(cfg, ["train.engine=fast"]), OUT / "e2e" / "one", progress=False)
    one = time.perf_counter() - start
    start = time.perf_counter()
    runs = train_seeds(cfg, list(range(s)), OUT / "e2e" / "many", progress=False)
    many = time.perf_counter() - start
    size = sum(r.size_bytes() for r in runs)
    print(
        f"\n[end to end, {args.e2e_steps} steps, dense checkpoints] 1 seed {one:.1f} s; {s} seeds "
        f"{many:.1f} s = ×{many / one:.2f}; {size / 1e9:.2f} GB written"
    )
    shutil.rmtree(OUT / "e2e", ignore_errors=True)
    return {"one_s": one, "many_s": many, "S": s, "ratio": many / one, "bytes": size}


# ----------------------------------------------------------------------------- (d) checkpoints


@contextlib.contextmanager
def no_disk_writes(enabled: bool):
    """The fast engine's checkpoints without the files (snapshot and wait only, steps 0 and
    last still written): separates the writer thread's cost from the training thread's."""
    if not enabled:
        yield
        return
    real = store_writer.write_checkpoint
    calls = [0]

    def snapshot_only(out, step, weights, state, event, newest_state=None):
        calls[0] += 1
        if calls[0] == 1:
            return real(out, step, weights, state, event, newest_state)
        if event is not None:
            event.synchronize()

    store_writer.write_checkpoint = snapshot_only
    try:
        yield
    finally:
        store_writer.write_checkpoint = real


def bench_ckpt(args) -> dict:
    """train() with the preset's dense schedule vs with checkpoints only at 0 and the end."""
    preset = args.ckpt_preset
    steps = args.ckpt_steps
    base = config_for(preset, args.device, [f"train.steps={steps}", "train.early_stop_acc=none"])
    variants = {
        "none": ["train.checkpoint_every=1000000", "train.checkpoint_log_steps=0"],
        "dense": [],
        "dense_fp16": ["train.checkpoint_dtype=float16"],
        "dense_no_disk": [],  # snapshots taken, files not written: the writer thread's share
    }
    engines = ["fast"] if args.device == "cuda" else ["fast", "eager"]
    res: dict = {}
    for engine in engines:
        names = [k for k in variants if engine == "fast" or k != "dense_no_disk"]
        times: dict[str, list[float]] = {k: [] for k in names}
        info, host = {}, {}
        warm = apply_overrides(base, [f"train.engine={engine}", "train.steps=20"])
        train(warm, OUT / "ckpt_warm", overwrite=True, progress=False)  # imports, allocator, JIT
        for _ in range(args.rounds):
            for k in names:
                cfg = apply_overrides(base, [f"train.engine={engine}", *variants[k]])
                out = OUT / f"ckpt_{k}"
                shutil.rmtree(out, ignore_errors=True)
                LAST_HOST_SECONDS.clear()
                sync(args.device)
                start = time.perf_counter()
                with no_disk_writes(enabled=k == "dense_no_disk"):
                    run = train(cfg, out, progress=False)
                sync(args.device)
                times[k].append(time.perf_counter() - start)
                host[k] = dict(LAST_HOST_SECONDS)  # empty for the eager engine
                if k == "dense_no_disk":
                    continue
                step_files = [run.step_path(s) for s in run.steps]
                info[k] = {
                    "checkpoints": len(step_files),
                    "bytes_per_checkpoint": step_files[-1].stat().st_size,
                    "state_bytes": sum(
                        (out / "state" / f"latest.{ext}").stat().st_size
                        for ext in ("safetensors", "json")
                    ),
                }
        r = {k: statistics.median(v) for k, v in times.items()}
        r["overhead_dense"] = r["dense"] / r["none"] - 1
        r["overhead_dense_fp16"] = r["dense_fp16"] / r["none"] - 1
        for k in names[1:]:
            r[f"overhead_{k}"] = r[k] / r["none"] - 1
        r["info"] = info
        r["training_thread_s"] = host
        res[engine] = r
        print(f"\n[{preset}, {steps} steps, {engine} engine on {args.device}]")
        for k in info:
            print(
                f"  {k:11s} {r[k]:7.2f} s  {info[k]['checkpoints']:4d} checkpoints of "
                f"{info[k]['bytes_per_checkpoint'] / 1e3:.1f} kB (+ resume state "
                f"{info[k]['state_bytes'] / 1e3:.1f} kB)"
            )
        print(
            f"  overhead of dense checkpoints: {100 * r['overhead_dense']:.1f}% (float32), "
            f"{100 * r['overhead_dense_fp16']:.1f}% (float16); "
            + ", ".join(f"{k} {100 * r[f'overhead_{k}']:.1f}%" for k in names[3:])
            + "; training-thread seconds "
            f"{json.dumps({k: {a: round(b, 3) for a, b in v.items()} for k, v in host.items()})}"
        )
    return res


# ----------------------------------------------------------------------------- (e) analysis


def bench_analysis(args) -> dict:
    """over_training time per checkpoint for every registered analysis that applies."""
    from grokinterp.analysis import ANALYSES, over_training

    src = Path(args.run)
    if not (src / "run.json").is_file():
        print(f"training {args.analysis_preset} into {src} (fast engine) for the analysis bench")
        cfg = apply_overrides(load_preset(args.analysis_preset), ["train.engine=fast"])
        train(cfg, src, progress=False)
    dst = OUT / "analysis_run"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis", "state"))
    run = Run.open(dst)
    steps = run.steps[:: max(1, len(run.steps) // args.analysis_checkpoints)][
        : args.analysis_checkpoints
    ]
    res = {}
    print(f"\n[over_training on {len(steps)} checkpoints of {src}]")
    for name, spec in sorted(ANALYSES.items()):
        reason = spec.applies(run) if getattr(spec, "applies", None) else None
        if reason:
            print(f"  {name:12s} skipped: {reason}")
            continue
        start = time.perf_counter()
        try:
            over_training(run, [name], steps=steps, progress=False, force=True)
        except Exception as e:  # noqa: BLE001  (report, keep benchmarking the others)
            print(f"  {name:12s} failed: {type(e).__name__}: {e}")
            continue
        per = (time.perf_counter() - start) / len(steps)
        res[name] = per
        print(f"  {name:12s} {1e3 * per:9.1f} ms per checkpoint")
    return res


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=["step", "grok", "seeds", "ckpt", "analysis"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--presets", nargs="+", default=["demo", "nanda2023"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="step: also time torch.compile")
    ap.add_argument("--grok-baselines", nargs="+", default=["plain"], help="plain and/or eager")
    ap.add_argument("--max-steps", type=int, default=40000)
    ap.add_argument("--grok-tf32", action="store_true", help="grok: also the fast engine + TF32")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--seed-preset", default="nanda2023")
    ap.add_argument("--tf32-modes", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--compile-modes", type=int, nargs="+", default=[0])
    ap.add_argument("--end-to-end", action="store_true", help="seeds: also train_seeds() runs")
    ap.add_argument("--e2e-steps", type=int, default=1000)
    ap.add_argument("--e2e-set", nargs="*", default=[], help="seeds --end-to-end: overrides")
    ap.add_argument("--ckpt-preset", default="nanda2023")
    ap.add_argument("--ckpt-steps", type=int, default=3000)
    ap.add_argument("--run", default="checkpoints/bench_demo")
    ap.add_argument("--analysis-preset", default="demo")
    ap.add_argument("--analysis-checkpoints", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"bench_train {args.what}: {json.dumps(info)}")
    fn = {
        "step": bench_step,
        "grok": bench_grok,
        "seeds": bench_seeds,
        "ckpt": bench_ckpt,
        "analysis": bench_analysis,
    }[args.what]
    res = {"machine": info, "command": " ".join(sys.argv), "results": fn(args)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
