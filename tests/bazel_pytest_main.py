"""Entry point of the Bazel py_test targets: runs pytest on one test file, skipping `slow` tests."""

import os
import sys

import pytest


def main() -> int:
    test_file = os.path.abspath(sys.argv[1])
    os.chdir(os.path.dirname(os.path.dirname(test_file)))  # the repo root inside the runfiles tree
    code = pytest.main([test_file, "-m", "not slow", "-p", "no:cacheprovider", "-q"])
    # 5 = every test in the file is marked slow, so nothing was selected here.
    return 0 if code == pytest.ExitCode.NO_TESTS_COLLECTED else int(code)


if __name__ == "__main__":
    sys.exit(main())
