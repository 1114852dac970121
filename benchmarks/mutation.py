"""Mutation score of the modules whose mistakes would change a verdict, each against its fast tests.

A green suite only means something if the tests fail when the code is wrong. This script asks
mutmut (https://github.com/boxed/mutmut) to make small wrong versions of each module (a `<` for a
`<=`, a 1 for a 0, a dropped argument) and runs that module's own unit tests against each: a
mutant the tests still pass on is a mistake the suite would miss. docs/testing.md keeps the
table this prints and says which survivors were judged equivalent (the same behaviour, written
otherwise).

mutmut is not one of orch's dependencies; install it beside them:

    pip install "mutmut>=3.8,<4"
    python benchmarks/mutation.py                  # every module below, one after the other
    python benchmarks/mutation.py schedules stats  # some of them
    python benchmarks/mutation.py --show-survivors decoding   # each survivor's diff too

Each module runs in a copy of the working tree under a temporary folder (mutmut rewrites the
sources it mutates, so the checkout is never touched), on `--children` processes (default 1: a
shared 2-core machine), with mutmut's per-mutant timeout (15 x the tests' clean time + 1 s; 3 x for
decoding). Only
the tests that reach a mutated function run against it, and only the test files listed here.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trainers.metrics import NO_JAVA_ENV  # noqa: E402  (the checkout's own, whether orch is installed or not)

# name: (module to mutate, its fast unit tests). The integration tests (-m integration) never run here.
MODULES: dict[str, tuple[str, list[str]]] = {
    "metrics": ("trainers/metrics.py", ["tests/trainers/test_metrics.py", "tests/orchestrator/commands/test_score.py"]),
    "karpathy": ("trainers/data/karpathy.py", ["tests/trainers/data/test_karpathy.py"]),
    "decoding": ("trainers/decoding.py", ["tests/trainers/test_decoding.py", "tests/trainers/test_tutorial_parity.py"]),
    "schedules": ("trainers/schedules.py", ["tests/trainers/test_schedules.py"]),
    "features": ("trainers/features.py", ["tests/trainers/test_features.py"]),
    "plan": ("orchestrator/experiment/plan.py", ["tests/orchestrator/experiment/test_plan.py"]),
    "stats": ("orchestrator/reporting/stats.py", ["tests/orchestrator/reporting/test_stats.py"]),
}

KILLED = {"killed", "timeout", "segfault", "suspicious"}  # a test noticed (a hang or a crash counts)
NOT_RUN = {"no tests", "skipped"}  # no selected test reaches the mutated function

# Scoring runs twice: first with Java hidden (ORCH_NO_JAVA=1), where each mutant's tests take seconds,
# then with Java, as users score, for the mutants that left alive or did not reach (the PTB and METEOR
# plumbing): their tests start JVMs, so that run is the long one. Its tests end their METEOR JVM when
# their module ends, and a JVM whose Python process is gone (a mutant's, ended by mutmut without exit
# handlers) reads the end of its input and exits. Without Java on the machine the second run reaches
# the plumbing no better, and it stays "not run".
# A mutant that desyncs METEOR's stream waits forever: the Java run's timeout is 4 x its tests' clean
# time (about 30 s), not 15 x.
JAVA_SECOND = {"metrics"}
JAVA_TIMEOUT_MULTIPLIER = 4

# decoding.py is too big to finish on a shared 2-core machine (524 mutants, its tests decode for
# seconds, and a mutant that never ends a caption waits out its timeout): its key functions only, the
# length penalty and the beam search that picks by it, with a tighter per-mutant timeout.
FUNCTIONS = {"decoding": ["trainers.decoding.x_length_penalised__mutmut_*", "trainers.decoding.x_decode_for_betas__mutmut_*",
                          "trainers.decoding.x__beam_search__mutmut_*", "trainers.decoding.xǁ_BestSoFarǁ*"]}
TIMEOUT_MULTIPLIER = {"decoding": 3}
# mutmut forks each mutant's process from one that already ran torch: a second OpenMP thread pool
# after a fork can hang (every mutant a false "timeout"); one thread each also suits a shared machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The plan's launch-cap test drives the Ray launcher, not the plan: it is left out of the plan's run.
DESELECTED = {"plan": ["tests/orchestrator/experiment/test_plan.py::test_the_launch_caps_concurrent_trials_as_the_plan_says"]}


def copy_working_tree(destination: Path, committed: bool = False) -> None:
    """The files git tracks or would track (the working tree's versions, uncommitted edits included), or
    with `committed` the last commit's files alone (others' edits in progress left out)."""
    if committed:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def mutmut_config(module: str, tests: list[str], deselected: list[str], timeout_multiplier: float = 15) -> str:
    """setup.cfg's [mutmut] section: mutate one module, select its tests, keep pytest quiet."""
    lines = ["[mutmut]", "source_paths=", "    trainers", "    orchestrator", "only_mutate=", f"    {module}",
             "pytest_add_cli_args_test_selection="]
    lines += [f"    {test}" for test in tests]
    lines += ["pytest_add_cli_args=", "    -p", "    no:cacheprovider", "    -q"]
    lines += [f"    --deselect={test}" for test in deselected]
    lines += [f"timeout_multiplier={timeout_multiplier}"]
    return "\n".join(lines) + "\n"


def run_module(name: str, children: int, show_survivors: bool, keep: bool, committed: bool = False) -> dict:
    module, tests = MODULES[name]
    started = time.monotonic()
    java_second = name in JAVA_SECOND  # fast first with Java hidden, then with Java what that left alive
    statuses, diffs = _run_mutmut(name, children, FUNCTIONS.get(name, []), {NO_JAVA_ENV: "1"} if java_second else {},
                                  show_survivors, keep, committed, TIMEOUT_MULTIPLIER.get(name, 15))
    again = sorted((mutant for mutant, status in statuses.items() if status not in KILLED), key=_natural)
    if java_second and again:
        with_java, diffs = _run_mutmut(name, children, again, {}, show_survivors, keep, committed,
                                       JAVA_TIMEOUT_MULTIPLIER)
        statuses.update(with_java)
    survivors = sorted((mutant for mutant, status in statuses.items() if status not in KILLED | NOT_RUN), key=_natural)
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return {"module": module, "tests": tests, "mutants": len(statuses), "statuses": counts,
            "killed": sum(status in KILLED for status in statuses.values()),
            "not_run": sum(status in NOT_RUN for status in statuses.values()),
            "seconds": round(time.monotonic() - started),
            "survivors": {mutant: statuses[mutant] for mutant in survivors},
            "diffs": {mutant: diffs[mutant] for mutant in survivors if mutant in diffs}}


def _run_mutmut(name: str, children: int, mutants: list[str], environment: dict[str, str], show_survivors: bool,
                keep: bool, committed: bool, timeout_multiplier: float) -> tuple[dict[str, str], dict[str, list[str]]]:
    """One mutmut run over a fresh copy of the tree: each mutant's status (only those named, where
    `mutants` names some or gives patterns), and the diffs of those that survived."""
    module, tests = MODULES[name]
    folder = Path(tempfile.mkdtemp(prefix=f"orch-mutation-{name}-"))
    try:
        copy_working_tree(folder, committed)
        (folder / "pyproject.toml").write_text(  # mutmut reads [tool.mutmut] there first: leave it only setup.cfg
            re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", (folder / "pyproject.toml").read_text()))
        (folder / "setup.cfg").write_text(mutmut_config(module, tests, DESELECTED.get(name, []), timeout_multiplier))
        # The tests read ../shared/fixtures beside the checkout; mutmut runs them from <copy>/mutants.
        if (ROOT.parent / "shared").is_dir():
            (folder / "shared").symlink_to(ROOT.parent / "shared")
        inherited = {key: value for key, value in os.environ.items() if key != NO_JAVA_ENV}
        run = subprocess.run(["mutmut", "run", "--max-children", str(children), *mutants], cwd=folder,
                             capture_output=True, text=True, env={**inherited, **ONE_THREAD, **environment})
        results = subprocess.run(["mutmut", "results", "--all", "true"], cwd=folder, capture_output=True,
                                 text=True).stdout
        statuses = dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", results, flags=re.M))
        if mutants:
            statuses = {mutant: status for mutant, status in statuses.items()
                        if any(fnmatch.fnmatch(mutant, pattern) for pattern in mutants)}
        if run.returncode != 0 or not statuses:
            raise SystemExit(f"mutmut failed on {module} (exit {run.returncode}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
        diffs = {}
        if show_survivors:
            for mutant, status in statuses.items():
                if status not in KILLED | NOT_RUN:
                    shown = subprocess.run(["mutmut", "show", mutant], cwd=folder, capture_output=True, text=True).stdout
                    diffs[mutant] = [line for line in shown.splitlines()
                                     if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        return statuses, diffs
    finally:
        if keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _natural(mutant: str) -> tuple[str, int]:
    stem, number = mutant.rsplit("_", 1)
    return stem, int(number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"some of: {', '.join(MODULES)} (default all)")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--show-survivors", action="store_true", help="print each surviving mutant's diff")
    parser.add_argument("--keep", action="store_true", help="keep each module's copy (to `mutmut browse` it)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--committed", action="store_true", help="test the last commit, not the working tree")
    args = parser.parse_args()
    unknown = [name for name in args.modules if name not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}: choose from {', '.join(MODULES)}")
    if shutil.which("mutmut") is None:
        raise SystemExit('mutmut is not installed: pip install "mutmut>=3.8,<4"')

    results = []
    print("| module | mutants | not run | killed | survived | killed share of those run | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.modules or list(MODULES):
        result = run_module(name, args.children, args.show_survivors, args.keep, args.committed)
        results.append(result)
        ran = result["mutants"] - result["not_run"]
        print(f"| {result['module']} | {result['mutants']} | {result['not_run']} | {result['killed']} | "
              f"{ran - result['killed']} | {result['killed'] / max(ran, 1):.0%} | {result['seconds']} |", flush=True)
        if args.json:  # after each module, so a long run's first results are there to read
            args.json.write_text(json.dumps(results, indent=1))
    for result in results:
        for mutant, status in result["survivors"].items():
            print(f"\n{mutant}: {status}")
            for line in result["diffs"].get(mutant, []):
                print(f"    {line}")


if __name__ == "__main__":
    main()
