#!/usr/bin/python3
"""Summarise a cache-tests (github.com/http-tests/cache-tests) JSON result file.

    scripts/cache_tests_summary.py PATH_TO_CACHE_TESTS RESULTS.json [--label NAME]

Reads the suite's own test index (node prints tests/index.mjs as JSON), then
classifies every result as the suite's results page does
(test-engine/lib/results.mjs, determineTestResult): a test whose dependencies
did not pass is a dependency failure even if its own result is `true`;
["Setup", ...] is a setup failure (["Setup", "retry"] a retry); an AbortError
is a harness failure; otherwise `true` passes and anything else fails.

"Required" tests are those with kind "required" or no kind, except
browser_only ones (the command-line client does not run them). Prints
passed/total for them overall and per suite, then each failing one.
"""
import argparse
import json
import subprocess
import sys
from collections import Counter, OrderedDict

DUMP_INDEX = ("const m = await import(process.argv[1]);"
              "process.stdout.write(JSON.stringify(m.default))")


def load_index(suite_dir):
    out = subprocess.run(
        ["node", "--input-type=module", "-e", DUMP_INDEX, f"{suite_dir}/tests/index.mjs"],
        check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def classify(tests, results, test_id):
    """Port of determineTestResult(..., honorDependencies=true)."""
    test = tests[test_id]
    result = results.get(test_id)
    if result is None:
        return "untested"
    for dep in test.get("depends_on", []):
        if classify(tests, results, dep) not in ("pass", "yes"):
            return "dependency"
    if isinstance(result, list) and result and result[0] == "Setup":
        return "retry" if result[1:2] == ["retry"] else "setup"
    if result is False or (isinstance(result, list) and result and result[0] == "AbortError"):
        return "harness"
    kind = test.get("kind", "required")
    if kind == "check":
        return "yes" if result is True else "no"
    if result is True:
        return "pass"
    return "optional_fail" if kind == "optimal" else "fail"


def is_required(test):
    return test.get("kind", "required") == "required" and not test.get("browser_only")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite_dir")
    ap.add_argument("results")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    index = load_index(args.suite_dir)
    with open(args.results) as f:
        results = json.load(f)
    tests = {t["id"]: t for suite in index for t in suite["tests"]}

    per_suite = OrderedDict()
    failing = []
    kinds = Counter()
    raw_true = 0
    for suite in index:
        passed = total = 0
        for t in suite["tests"]:
            if not is_required(t):
                continue
            c = classify(tests, results, t["id"])
            total += 1
            kinds[c] += 1
            raw_true += results.get(t["id"]) is True
            if c == "pass":
                passed += 1
            else:
                failing.append((suite["id"], t, c, results.get(t["id"])))
        if total:
            per_suite[suite["id"]] = (suite["name"], passed, total)

    npass = sum(p for _, p, _ in per_suite.values())
    ntotal = sum(t for _, _, t in per_suite.values())
    label = f" ({args.label})" if args.label else ""
    print(f"cache-tests{label}: required tests passed {npass}/{ntotal}")
    other = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()) if k != "pass")
    if other:
        print(f"  not passed: {other}")
    if raw_true != npass:
        print(f"  ({raw_true} returned true; {raw_true - npass} of those count as "
              "dependency failures, as on the suite's results page)")
    print()
    print(f"  {'suite':<20} {'passed':>6}  name")
    for sid, (name, p, t) in per_suite.items():
        print(f"  {sid:<20} {f'{p}/{t}':>6}  {name}")
    if failing:
        print()
        print("failing required tests:")
        for sid, t, c, res in failing:
            print(f"  [{sid}] {t['id']} ({c}): {t['name']}")
            if isinstance(res, list) and len(res) > 1 and c != "dependency":
                print(f"      {res[0]}: {str(res[1])[:160]}")
            elif c == "dependency":
                print(f"      depends on: {', '.join(t.get('depends_on', []))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
