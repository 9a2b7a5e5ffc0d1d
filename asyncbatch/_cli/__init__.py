"""The ``asyncbatch`` command line: commands, input files, live progress, telemetry, the demo.

`_main` holds the command group, its one-line errors and `demo`; `_run` the `run`
command, `_runs` `runs` and `report`, `_dlq` the
``dlq`` commands, `_input` job references, item files, ``--db`` and exit
codes, `_live` the progress bar and report rendering, `_telemetry` the
exporters, `_demo` the demo. The top layer: it may import everything, and
nothing imports it but ``__main__`` and the console script.
"""

from ._main import cli, main

__all__ = ["cli", "main"]
