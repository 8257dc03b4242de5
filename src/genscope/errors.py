"""Errors a user can cause. The CLI turns a ``UserError`` into one line on stderr and exit code 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: an unknown name, a value out of range, a file that is missing or unsafe.

    The message is one line that names the problem and, where there is a fixed set, the accepted values.
    """


def choice_error(what: str, given: object, accepted: list[str] | tuple[str, ...]) -> UserError:
    return UserError(f"unknown {what} {given!r}; accepted: {', '.join(str(a) for a in accepted)}")
