"""The `iqa` command line: thin Typer commands that build configs and call
:mod:`iqa_cache`."""
