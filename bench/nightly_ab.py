"""The whole nightly job at demo size on the embedded defaults, this tree against another (e.g.
main), same run: seconds per step and in all.

Each tree runs in its own process (its own PYTHONPATH), alternating A, B (`--repeats` pairs), on
the same images: the demo's synthetic factory (`--count` images of each default type at
`--size`), two nights (the second with as many new images again), each night one in-process run
of the `nightly` job (ingest, dataset version, training, label audit, evaluation, promotion) on a
fresh home (local stores, SQLite MLflow). Training is bound by epochs (`--epochs`, a small
U-Net at 64 px on the CPU, as the tests train), so both trees do the same arithmetic. A step's
time is its STEP_START to STEP_SUCCESS; the steps of a graph-backed asset (`test_scores.*`) are
summed under the asset's name.

    python -m bench.nightly_ab --a /path/to/main --b . [--repeats 1] [--count 16] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(count: int, size: int, epochs: int) -> dict[str, float]:
    """One tree's two nights (runs in the child process; imports the tree on PYTHONPATH)."""
    import dagster as dg

    from maskfind_pipeline import synthetic
    from maskfind_pipeline.storage import LocalObjectStore

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp:
        home = Path(tmp)
        for key in list(os.environ):
            if key.startswith(("MASKFIND_", "MLFLOW_", "DAGSTER_")):
                del os.environ[key]
        os.environ["MASKFIND_HOME"] = str(home)
        from maskfind_pipeline.definitions import defs

        job = defs().resolve_job_def("nightly")
        for night in (1, 2):
            synthetic.generate(
                LocalObjectStore(home / "data"),
                synthetic.DEFAULT_TYPES,
                count,
                size=size,
                start_index=(night - 1) * count,
            )
            with dg.DagsterInstance.ephemeral() as instance:
                start = time.perf_counter()
                result = job.execute_in_process(run_config=_config(epochs), instance=instance)
                wall = time.perf_counter() - start
                assert result.success, f"night {night} failed"
                started: dict[str, float] = {}
                for record in instance.all_logs(result.run_id):
                    event = record.dagster_event
                    if event is None or record.step_key is None:
                        continue
                    name = f"night {night}: {record.step_key.split('.')[0]}"
                    if event.is_step_start:
                        started[record.step_key] = record.timestamp
                    elif event.is_step_success:
                        spent = record.timestamp - started[record.step_key]
                        times[name] = times.get(name, 0.0) + spent
                times[f"night {night}: run"] = wall
    times["total"] = sum(v for k, v in times.items() if k.endswith(": run"))
    return times


def _config(epochs: int) -> dict:
    training = {
        "model": {
            "encoder_name": "resnet18",
            "encoder_weights": None,
            "input_size": 64,
            "decoder_channels": [32, 16, 16, 8, 8],
        },
        "train": {
            "epochs": epochs,
            "batch_size": 8,
            "device": "cpu",
            "augment": {"enabled": False},
        },
    }
    gate = {"floor": 0.0, "tolerance": 1.0, "overall_tolerance": 1.0}
    return {"ops": {"mask_model": {"config": training}, "promotion": {"config": gate}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="baseline tree (e.g. main)")
    parser.add_argument("--b", type=Path, default=Path("."), help="tree measured against it")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.count, args.size, args.epochs)))
        return
    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for _ in range(args.repeats):
        for label, tree in (("a", args.a), ("b", args.b)):
            env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
            command = [sys.executable, str(Path(__file__).resolve()), "--child", "--a", "."]
            command += ["--count", str(args.count), "--size", str(args.size)]
            command += ["--epochs", str(args.epochs)]
            done = subprocess.run(
                command, env=env, cwd=tree.resolve(), capture_output=True, text=True
            )
            if done.returncode:
                raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
            runs[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{label}: {runs[label][-1]['total']:.1f} s", file=sys.stderr)
    print(f"a = {args.a}, b = {args.b}; {args.repeats} run(s) each, alternating; median seconds")
    print("| step | a | b | b / a |")
    print("|---|---|---|---|")
    steps = list(dict.fromkeys([*runs["a"][0], *runs["b"][0]]))
    for step in steps:
        a = statistics.median(r.get(step, 0.0) for r in runs["a"])
        b = statistics.median(r.get(step, 0.0) for r in runs["b"])
        ratio = f"{b / a:.2f}" if a else "-"
        print(f"| {step} | {a:.2f} | {b:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
