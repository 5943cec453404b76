"""User-facing errors.

Every error a user can cause (bad path, malformed file, wrong shape, NaN, unknown name) is raised as a
`RobolearnError` subclass whose message names the thing that is wrong and how to fix it. The CLI prints
these as one line instead of a traceback.
"""

from __future__ import annotations


class RobolearnError(Exception):
    """Base class of errors caused by user input; the message says what is wrong and the fix."""


class ConfigError(RobolearnError, ValueError):
    """A configuration value, preset or override is invalid."""


class UnknownNameError(RobolearnError, KeyError):
    """A name (task, preset, camera, ...) is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ActionError(RobolearnError, ValueError):
    """An action has the wrong shape or non-finite values."""


class RendererError(RobolearnError, RuntimeError):
    """No working off-screen OpenGL backend."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean X?' hint for a misspelt name, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
