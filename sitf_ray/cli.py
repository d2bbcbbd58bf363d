"""`sitf-ray` command line (DESIGN.md §3). Exit status 2 = bad config or arguments, 1 = the run failed."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # transformers' "Writing model shards" bars: not ours
# A Ray call after this process's Ray is shut down (a library's thread at exit) fails instead of connecting to
# whichever other Ray instance runs on the machine; read when ray is imported, so set before that
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")



def _cfg(path, overrides):
    from sitf_ray import config as C
    return C.load(path, overrides)


def _run_dir(path: str, need: str = "config.yaml", why: str = "") -> Path:
    """A run directory that holds `need`; UsageError (exit 2, one line) otherwise."""
    from sitf_ray.config import UsageError
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"{path}: no such run directory")
    if not (d / "config.yaml").is_file():
        raise UsageError(f"{path}: not a run directory (no config.yaml)")
    if not (d / need).exists():
        raise UsageError(f"{path}: no {need}{why}")
    return d


def _ray_logs() -> None:
    """The last line of a run: where Ray's own logs went (the console shows only ours)."""
    from sitf_ray.runs.console import log_lines
    for line in log_lines():
        print(line)


def cmd_quickstart(a) -> int:
    from sitf_ray import config as C
    from sitf_ray.pipeline import run
    from sitf_ray.runs.report import table
    cfg = C.load(None, C.QUICKSTART + a.overrides)
    t0 = time.time()
    res = run(cfg, a.out, resume=(Path(a.out) / "config.yaml").exists() and a.resume)
    print("\n" + table(res))
    print(f"\nquickstart finished in {(time.time() - t0) / 60:.1f} min; run directory: {a.out} "
          f"(report: {Path(a.out) / 'report.md'})")
    _ray_logs()
    return 0


def cmd_run(a) -> int:
    from sitf_ray.pipeline import run
    from sitf_ray.runs.report import table
    cfg = _cfg(a.config, a.overrides)
    a.out = a.out or f"runs/{Path(a.config).stem}"
    res = run(cfg, a.out)
    print("\n" + table(res))
    _ray_logs()
    return 0


def cmd_resume(a) -> int:
    from sitf_ray import config as C
    from sitf_ray.pipeline import run
    from sitf_ray.runs.report import table
    if "://" in a.dir:   # a run mirrored to a bucket: fetch it, then continue here
        from sitf_ray.runs.artifacts import mirror_down
        local = Path("runs") / a.dir.rstrip("/").rsplit("/", 1)[-1]
        a.dir = str(mirror_down(a.dir, local))
    path = _run_dir(a.dir) / "config.yaml"
    done = (Path(a.dir) / "results.json").exists()
    print(f"[resume] {a.dir}: " + ("finished run; checking every stage's files (nothing finished is redone)"
                                   if done else "continuing (finished stages are kept)"), flush=True)
    res = run(C.load(path, a.overrides), a.dir, resume=True)
    print("\n" + table(res))
    _ray_logs()
    return 0


def cmd_eval(a) -> int:
    from sitf_ray import config as C
    from sitf_ray.cluster.ray_init import init_ray
    from sitf_ray.rollout.evaluate import evaluate
    from sitf_ray.runs.context import Context, prepare
    from sitf_ray.rollout.stages import load_policy
    from sitf_ray.pipeline import shutdown
    d = _run_dir(a.dir)
    its = sorted(d.glob("iter_*/policy"))
    if not its:
        raise C.UsageError(f"{a.dir}: no trained policy yet (iter_*/policy)")
    policy = d / f"iter_{a.iteration:02d}" / "policy" if a.iteration is not None else its[-1]
    if not policy.exists():
        have = ", ".join(str(int(p.parent.name.split("_")[1])) for p in its)
        raise C.UsageError(f"{a.dir}: no policy for iteration {a.iteration} (iterations with a policy: {have})")
    cfg = C.load(d / "config.yaml")
    print(f"[eval] {policy}: starting Ray and a vLLM generator for {a.split} ...", flush=True)
    init_ray(cfg.cluster.num_cpus)
    ctx: Context = prepare(cfg, a.dir, resume=True)
    try:
        load_policy(ctx, policy)
        rows = ctx.splits["test"] if a.split == "test" else ctx.splits[a.split]
        res = evaluate(ctx.pool, ctx.task, rows, cfg.eval.max_tokens)
        print(f"{policy}: {a.split} accuracy {res['accuracy']:.4f} ({res['correct']}/{res['n']})")
    finally:
        shutdown(ctx)
    return 0


def cmd_report(a) -> int:
    from sitf_ray.runs.artifacts import read_json
    from sitf_ray.runs.report import seeds_table, table, write_report, write_seeds_report
    for d in a.dir:
        _run_dir(d, "results.json", " (the run has not finished; `sitf-ray resume " + d + "` finishes it)")
    if len(a.dir) > 1:   # several seeds of one config: mean +- sd
        out = write_seeds_report(a.dir, a.out or "runs/seeds-report")     # refuses runs of other recipes first
        print(seeds_table([read_json(Path(d) / "results.json") for d in a.dir]))
        print(f"\nwrote {out}")
        return 0
    out = write_report(a.dir[0])
    print(table(read_json(Path(a.dir[0]) / "results.json")))
    print(f"\nwrote {out}")
    return 0


def cmd_compare(a) -> int:
    from sitf_ray import config as C
    from sitf_ray.pipeline import run
    from sitf_ray.runs.report import table
    methods = a.methods.split(",")
    cfg = C.load(a.config, a.overrides + [f"method={methods[0]}", f"baselines=[{','.join(methods[1:])}]"])
    res = run(cfg, a.out)
    print("\n" + table(res))
    _ray_logs()
    return 0


def cmd_sweep(a) -> int:
    from sitf_ray.sweep import sweep
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    sweep(a.out, seeds, [x.strip() for x in a.arms.split(",") if x.strip()], a.overrides)
    print(f"\nwrote {Path(a.out) / 'sweep.md'}")
    return 0


def cmd_serve(a) -> int:
    from sitf_ray.serving.app import serve_forever
    return serve_forever(a.dir, a.host, a.port, a.overrides)


def cmd_bench(a) -> int:
    from sitf_ray.bench import run_bench
    return run_bench(a.name, a.out, a.overrides)


def cmd_validate_cluster(a) -> int:
    from sitf_ray.cluster.validate import validate_cluster
    problems = validate_cluster(a.file, a.config)
    for p in problems:
        print(f"{a.file}: {p}", file=sys.stderr)
    if not problems:
        print(f"{a.file}: valid")
    return 2 if problems else 0


def cmd_eval_prm(a) -> int:
    from sitf_ray.bench import eval_prm
    d = _run_dir(a.dir)
    if not list(d.glob("iter_*/prm/config.json")):
        from sitf_ray.config import UsageError
        raise UsageError(f"{a.dir}: no trained PRM (iter_*/prm): eval-prm needs a run of a method with "
                         f"process feedback (sipf, sipf-dpo) that finished at least one PRM")
    print(f"[eval-prm] {a.dir}: label and PRM quality per iteration, then PRM best-of-N on the test split "
          f"(starts Ray and a vLLM generator) ...", flush=True)
    return eval_prm(a.dir, a.out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sitf-ray", description="Self-iterative process feedback (SIPF) on Ray, "
                                "vLLM and TRL. Overrides are key=value, e.g. orpo.beta=0.1.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", help="tiny model on arith: SFT, 3 SIPF iterations, baselines, report")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--fresh", dest="resume", action="store_false", help="refuse to continue an earlier run")
    q.add_argument("overrides", nargs="*")
    q.set_defaults(fn=cmd_quickstart)

    r = sub.add_parser("run", help="run a config (YAML) end to end")
    r.add_argument("config")
    r.add_argument("--out")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=cmd_run)

    r = sub.add_parser("resume", help="continue a run directory after a crash")
    r.add_argument("dir")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=cmd_resume)

    r = sub.add_parser("eval", help="evaluate a run's policy (latest or --iteration K)")
    r.add_argument("dir")
    r.add_argument("--iteration", type=int)
    r.add_argument("--split", default="test", choices=["test", "val", "train"])
    r.set_defaults(fn=cmd_eval)

    r = sub.add_parser("report", help="rebuild report.md and plots of a run; several runs: mean +- sd over seeds")
    r.add_argument("dir", nargs="+")
    r.add_argument("--out", help="several runs: folder for seeds.md and its plot (default runs/seeds-report)")
    r.set_defaults(fn=cmd_report)

    r = sub.add_parser("compare", help="run several methods from one M_0 and tabulate them")
    r.add_argument("config", nargs="?")
    r.add_argument("--methods", default="sipf,outcome,rft,sft")
    r.add_argument("--out", default="runs/compare")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=cmd_compare)

    r = sub.add_parser("sweep", help="research arms from one M_0 per seed (quickstart config): table of "
                                     "accuracy and strict accuracy, mean +- sd")
    r.add_argument("--out", default="runs/sweep")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--arms", default="sipf,sipf-nocheck,sipf-oracle,outcome,outcome-filter,rft,sft")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=cmd_sweep)

    r = sub.add_parser("serve", help="Ray Serve API over a trained run")
    r.add_argument("dir")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8000)
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=cmd_serve)

    r = sub.add_parser("bench", help="benchmarks: engines, actors, weightsync, labeling, orpo, fit, pipeline")
    r.add_argument("name", choices=["engines", "actors", "weightsync", "labeling", "orpo", "fit", "pipeline"])
    r.add_argument("--out")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=cmd_bench)

    r = sub.add_parser("eval-prm", help="PRM and label quality of a run (AUC, F1 vs oracle, best-of-N)")
    r.add_argument("dir")
    r.add_argument("--out")
    r.set_defaults(fn=cmd_eval_prm)

    r = sub.add_parser("validate-cluster", help="check a Ray autoscaler cluster.yaml offline")
    r.add_argument("file")
    r.add_argument("--config", help="run config whose cluster.* resources must fit the cluster")
    r.set_defaults(fn=cmd_validate_cluster)
    return p


def main(argv=None) -> int:
    from sitf_ray.cluster.scheduling import ClusterError
    from sitf_ray.runs.artifacts import ArtifactError
    from sitf_ray.config import ConfigError, UsageError
    from sitf_ray.tasks.base import DataError
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value overrides may come anywhere after the command (argparse cannot mix them with options)
    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    args = parser().parse_args([a for a in argv if a not in overrides])
    if hasattr(args, "overrides"):
        args.overrides = overrides
    elif overrides:
        print(f"sitf-ray {args.cmd}: takes no key=value overrides (got {overrides[0]})", file=sys.stderr)
        return 2
    from sitf_ray.runs.console import install_sigint
    install_sigint()
    try:
        return args.fn(args) or 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (ClusterError, DataError, ArtifactError) as e:   # the user's input or cluster: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = getattr(args, "out", None) if args.cmd in ("quickstart", "run", "compare") else \
            getattr(args, "dir", None) if args.cmd == "resume" else None
        print(f"interrupted; `sitf-ray resume {where}` continues where this stopped" if where else "interrupted",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
