"""The ``actbridge`` command (:mod:`actbridge.cli.commands`) and its main job, the demo
(:mod:`actbridge.cli.demo`)."""

from actbridge.cli.commands import main

__all__ = ["main"]
