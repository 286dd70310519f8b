"""Side-by-side benchmarks of wsup and peer WebSocket servers.

Run ``python -m bench --help`` (or ``make bench``); the method and the latest
numbers are in ``docs/performance.md``. Modules: :mod:`bench.registry` (the
servers), :mod:`bench.scenarios` (what is measured), :mod:`bench.loadgen`
(the client processes), :mod:`bench.processes` (starting and stopping them),
:mod:`bench.procfs` (CPU and memory from ``/proc``), :mod:`bench.report`
(the table and JSON). ``bench/servers/`` holds the peer servers.
"""
