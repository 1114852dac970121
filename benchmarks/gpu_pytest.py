"""Run pytest for benchmarks/gpu.sh and judge it by what ran, not by its exit status alone.

    python benchmarks/gpu_pytest.py [--dry-run] [--junit FILE] [PYTEST ARGS...]
    (default: -m gpu tests/trainers/test_gpu.py)

pytest exits 0 when every test was skipped, so a GPU run in which nothing ran (CUDA unseen by the
tests, a missing package skipping everything) would look green. Here the outcome is read from
pytest's JUnit XML: the step fails when pytest failed, when nothing was collected, or when no test
passed. On a GPU machine, tests skipped for a missing optional package (pycocoevalcap, Java) are
fine as long as others passed; their reasons are listed.

`--dry-run` (no GPU): the tests marked gpu all skip for want of CUDA ('needs a CUDA device'), as
expected there; the step passes when every test was skipped for that reason, and fails when any
was skipped for another or failed.

Prints one JSON object: pytest's exit status, the counts, each skip reason with its count, and the
verdict; pytest's own output goes to stderr. Exits 1 when the verdict is a failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA_REASON = "needs a CUDA device"  # tests/trainers/test_gpu.py's skip without CUDA
DEFAULT_TESTS = ["-m", "gpu", "tests/trainers/test_gpu.py"]


def outcomes(junit: Path) -> dict:
    """Counts and skip reasons from a JUnit XML file pytest wrote."""
    root = ET.parse(junit).getroot()
    counts = Counter()
    reasons = Counter()
    for case in root.iter("testcase"):
        skipped = case.find("skipped")
        if case.find("failure") is not None:
            counts["failed"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        elif skipped is not None:
            counts["skipped"] += 1
            reasons[_reason(skipped.get("message", ""))] += 1
        else:
            counts["passed"] += 1
    # errors at collection are reported as testsuite-level errors with no testcase
    suite_errors = sum(int(s.get("errors", 0)) for s in root.iter("testsuite"))
    counts["errors"] = max(counts["errors"], suite_errors)
    return {"collected": sum(counts.values()), "passed": counts["passed"], "failed": counts["failed"],
            "errors": counts["errors"], "skipped": counts["skipped"], "skip_reasons": dict(reasons)}


def _reason(message: str) -> str:
    """pytest writes a skip's message as 'reason' or 'Skipped: reason'."""
    return message.removeprefix("Skipped: ").strip()


def verdict(exit_status: int, counted: dict, dry_run: bool) -> tuple[bool, str]:
    """(passed?, one line) for the step."""
    passed, skipped, collected = counted["passed"], counted["skipped"], counted["collected"]
    others = {reason: n for reason, n in counted["skip_reasons"].items() if reason != NO_CUDA_REASON}
    if counted["failed"] or counted["errors"] or exit_status not in (0, 5):
        return False, (f"pytest exited {exit_status}: {counted['failed']} failed, {counted['errors']} errors, "
                       f"{passed} passed, {skipped} skipped")
    if collected == 0:
        return False, "no test was collected"
    if dry_run and passed == 0 and not others:
        return True, f"dry run: all {skipped} tests skipped for want of CUDA, as expected without a GPU"
    if passed == 0:
        why = "; ".join(f"{n} x {reason!r}" for reason, n in counted["skip_reasons"].items())
        return False, f"every test was skipped ({skipped}): {why}"
    note = f"; skipped: {'; '.join(f'{n} x {r!r}' for r, n in counted['skip_reasons'].items())}" if skipped else ""
    return True, f"{passed} passed{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU: skipped for want of CUDA is expected")
    parser.add_argument("--junit", type=Path, help="where pytest writes its JUnit XML (default: a temporary file)")
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="gpu_pytest.") as folder:
        junit = args.junit or Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   *(pytest_args or DEFAULT_TESTS)]
        print("$ " + " ".join(command), file=sys.stderr, flush=True)
        status = subprocess.run(command, cwd=ROOT, stdout=sys.stderr).returncode
        counted = outcomes(junit) if junit.exists() else {"collected": 0, "passed": 0, "failed": 0, "errors": 1,
                                                            "skipped": 0, "skip_reasons": {}}
    ok, line = verdict(status, counted, args.dry_run)
    print(json.dumps({"exit": status, **counted, "verdict": "passed" if ok else "failed", "summary": line}))
    print(f"pytest: {line}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
