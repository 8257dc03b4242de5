"""Argument validators shared by every command, study and the Python API: one call each, one clear
:class:`~genscope.errors.UserError` (exit code 2 on the command line) for every bad value.

* numbers: :func:`check_count` (integers, bools refused), :func:`check_positive_number`,
  :func:`check_fraction` (NaN and infinities refused: ``not 0 < x <= 1`` alone lets NaN through in some
  spellings, so every check is written ``ok = ...; if not ok``);
* text: :func:`check_text` - command-line arguments that are not valid UTF-8 arrive as surrogate escapes
  (PEP 383) and fail later, deep inside a tokenizer or SQLite; :func:`check_argv` refuses them up front;
* paths: :func:`check_path_name` (a component longer than the file system allows, or a path longer than
  ``PATH_MAX``), :func:`check_output_dir` (the folder exists and is writable, or can be created: checked
  before minutes of computing), :func:`check_run_id` (SQLite integers are signed 64-bit);
* memory: :func:`check_fits` - a tensor set that cannot be allocated is refused before it is allocated;
* workloads: :func:`refuse_inapplicable` - an option that does not apply to the chosen workload.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from genscope.errors import UserError

SQLITE_INT_MIN, SQLITE_INT_MAX = -(2**63), 2**63 - 1  # https://www.sqlite.org/datatype3.html (8-byte signed)
_DEFAULT_NAME_MAX = 255  # POSIX file systems (ext4, xfs, btrfs, APFS); pathconf says when it is known
_DEFAULT_PATH_MAX = 4096  # Linux <linux/limits.h>


# ---------------------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------------------
def check_count(what: str, value: Any, *, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum] (bools and floats refused)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise UserError(f"{what} must be an integer {bound}, got {value!r}")
    return value


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_number(what: str, value: Any) -> float:
    """A finite number > 0."""
    ok = _finite_number(value) and value > 0
    if not ok:
        raise UserError(f"{what} must be a finite number above 0, got {value!r}")
    return float(value)


def check_fraction(what: str, value: Any) -> float:
    """A finite number in (0, 1]."""
    ok = _finite_number(value) and 0 < value <= 1
    if not ok:
        raise UserError(f"{what} must be a number in (0, 1], got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------------------
def check_text(what: str, value: str) -> str:
    """Text that encodes as UTF-8 (surrogate escapes of undecodable argv bytes are refused)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start:exc.end].encode("utf-8", "surrogateescape")
        raise UserError(f"{what} is not valid UTF-8 (bytes {bad!r} at position {exc.start})") from None
    return value


def check_argv(argv: Iterable[str]) -> None:
    """Every command-line argument is valid UTF-8 (one place for filters, prompts, names and paths)."""
    for i, arg in enumerate(argv):
        if isinstance(arg, str):
            check_text(f"argument {i + 1}", arg)


# ---------------------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------------------
def _limit(path: Path, name: str, default: int) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, name))
    except (OSError, ValueError, AttributeError):
        return default


def check_path_name(what: str, path: str | os.PathLike) -> Path:
    """A path whose every component and whose whole length the file system accepts."""
    text = os.fspath(path)
    if isinstance(text, str):
        check_text(what, text)
    if not text:
        raise UserError(f"{what} is empty")
    p = Path(text).expanduser()
    name_max = _limit(p.parent, "PC_NAME_MAX", _DEFAULT_NAME_MAX)
    for part in p.parts:
        if len(os.fsencode(part)) > name_max:
            raise UserError(f"{what}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; this file "
                            f"system allows {name_max}")
    path_max = _limit(p.parent, "PC_PATH_MAX", _DEFAULT_PATH_MAX)
    if len(os.fsencode(str(p.absolute()))) >= path_max:
        raise UserError(f"{what} is longer than this system's path limit ({path_max} bytes)")
    return p


def check_output_dir(what: str, path: str | os.PathLike) -> Path:
    """A folder that exists and is writable, or that can be created (its nearest existing parent is a
    writable folder). Nothing is created here."""
    p = check_path_name(what, path)
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{what} {str(p)!r} exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{what} {str(p)!r} is not writable")
        return p
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {str(p)!r} cannot be created: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {str(p)!r} cannot be created: {str(parent)!r} is not writable")
    return p


def check_output_file(what: str, path: str | os.PathLike) -> Path:
    """A file that can be written: a valid name in a folder that exists or can be created."""
    p = check_path_name(what, path)
    if p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a folder; give a file name")
    check_output_dir(f"folder of {what}", p.absolute().parent)
    return p


def name_too_long(exc: OSError) -> bool:
    return exc.errno == errno.ENAMETOOLONG


def check_run_id(value: Any) -> int:
    """A run id: an integer SQLite can hold."""
    try:
        run_id = int(value)
    except (TypeError, ValueError):
        raise UserError(f"run id must be an integer, got {value!r}") from None
    ok = SQLITE_INT_MIN <= run_id <= SQLITE_INT_MAX and not isinstance(value, bool)
    if not ok:
        raise UserError(f"run id {value!r} is out of range: run ids are integers up to {SQLITE_INT_MAX}")
    return run_id


# ---------------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------------
def available_bytes(device: Any = "cpu") -> int:
    """Memory that can be allocated now: free memory on a CUDA device, ``MemAvailable`` on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_fits(what: str, needed_bytes: float, device: Any = "cpu", fraction: float = 0.9) -> None:
    """Refuse before allocating when ``needed_bytes`` exceeds ``fraction`` of the memory available now."""
    import torch

    if torch.device(device).type == "meta":
        return
    budget = fraction * available_bytes(device)
    if needed_bytes > budget:
        raise UserError(f"{what} needs about {needed_bytes / 2**30:,.1f} GiB but only {budget / 2**30:,.1f} GiB "
                        f"can be allocated on {device}; choose smaller sizes")


# ---------------------------------------------------------------------------------------------------------
# options that do not apply
# ---------------------------------------------------------------------------------------------------------
def refuse_inapplicable(subject: str, options: Mapping[str, Any], applicable: Iterable[str]) -> None:
    """Options given (not None) that ``subject`` does not use are an error, not silently ignored.

    ``options``: option name (as the user spells it, e.g. ``--decode-tokens``) -> value.
    """
    allowed = set(applicable)
    given = [name for name, value in options.items() if value is not None and name not in allowed]
    if given:
        raise UserError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {subject}; "
                        f"its options: {', '.join(sorted(allowed)) or 'none'}")


__all__ = ["PATH_OPTIONS", "available_bytes", "check_argv", "check_path_options", "check_count", "check_fits", "check_fraction", "check_output_dir",
           "check_output_file", "check_path_name", "check_positive_number", "check_run_id", "check_text",
           "name_too_long", "refuse_inapplicable"]


PATH_OPTIONS = ("db", "out", "trace", "weights", "output")  # argparse dests that name files or folders


def check_path_options(args: Any) -> None:
    """Every path option of a parsed command line (:data:`PATH_OPTIONS`) has a name the file system accepts."""
    for dest in PATH_OPTIONS:
        value = getattr(args, dest, None)
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            check_path_name(f"--{dest.replace('_', '-')}", value)
