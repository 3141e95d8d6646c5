"""The walle command-line interface."""
