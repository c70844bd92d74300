"""TideTune's test suite (a package so that ``tests.support`` and ``tests.lab`` import)."""
