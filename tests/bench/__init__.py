"""`make bench`: measures the SPEC §5 targets in one run on this machine (see tests/bench/main.py).

Nothing here is collected by pytest: no module name starts with ``test_``.
"""
