#!/usr/bin/env python3
"""Run the integration suites: python3 tests/integration/run.py [pattern...]

Each test_*.py module is a unittest suite against a real kvfs mount.
Patterns select modules or tests by substring (e.g. `rename`).
"""
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def main():
    pats = [p for p in sys.argv[1:] if p]
    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = [t for t in iter_tests(suite) if not pats or any(p in t.id() for p in pats)]
    start = time.time()
    result = unittest.TextTestRunner(verbosity=1 if not os.environ.get("V") else 2,
                                     stream=sys.stdout).run(unittest.TestSuite(tests))
    print("integration: %d tests, %d failures, %d errors, %d skipped in %.1f s" %
          (result.testsRun, len(result.failures), len(result.errors), len(result.skipped),
           time.time() - start))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
