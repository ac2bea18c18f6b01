"""StoreFlow's recurring jobs and everything they need, free of any user interface.

The console, the runner, the CLI and the HTTP face all call this package's API;
nothing in here imports Textual.
"""
