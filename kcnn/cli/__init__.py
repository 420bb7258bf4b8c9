"""The ``kcnn`` command line (Typer). Heavy modules are imported inside commands."""
