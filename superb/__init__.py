"""superb: run a TOML matrix of tuning experiments unattended, keep results in SQLite,
and turn them into tables and plots.

The library comes first (schema, matrix, results, runner, report, plot); ``cli.py`` is a
thin client of it.
"""


class SuperbError(Exception):
    """Bad input or a state the user can fix; the CLI prints it as one line, exit 2."""
