"""The faces of StoreFlow Ops: the Textual console, the CLI, the runner and the HTTP face.

All of them call the same `jobs` API.
"""
