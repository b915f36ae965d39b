"""sched: a load-aware scheduler daemon for staged autotuning jobs.

The registry (SQLite) is the single source of truth; the daemon grants stages to
forked runner processes under a pluggable strategy.  Modules import each other
relatively so the package can be renamed (``sched`` shadows a stdlib module).
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
