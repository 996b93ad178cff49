"""The harness the tests import: it lives in testkit.harness, which bench/
shares; this module keeps `from tests.harness import ...` working."""

from testkit.harness import *  # noqa: F403
