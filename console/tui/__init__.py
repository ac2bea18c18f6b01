"""The terminal console: the Textual app, its screens, widgets and styles."""
