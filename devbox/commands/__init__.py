"""One module per command family; each returns results (devbox.result) for cli.py to render.

Adding a command is one module here, one function in it, and one Typer signature in cli.py.
"""
