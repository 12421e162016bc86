"""Test and benchmark helpers: server launchers, a fault-injecting proxy, naive baselines,
generated catalogs and manifests. They live with the tests, never in the shipped package;
`bench/` imports them as `tests.support` when run from the repository root.
"""
