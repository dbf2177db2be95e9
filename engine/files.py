"""Reading files we do not control (checkpoints, settings) without trusting them.

A path may name a FIFO (opening it blocks forever), a device, a directory or
a file of gigabytes. Each file is opened without blocking and checked to be a
regular file of a sane size before a byte of it is read.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from engine.errors import EngineError

MB = 2**20
# Metadata files (config.json, tokenizer_config.json, index files). The
# largest tokenizer.json of a published code model is ~11 MB (Qwen2.5-Coder).
SMALL_FILE_LIMIT = 16 * MB
TOKENIZER_FILE_LIMIT = 64 * MB


def check_regular(path: Path) -> os.stat_result:
    """The file's stat (links followed), if it is a regular file; else EngineError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EngineError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {path}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise EngineError(f"{path} is not a regular file ({_kind(st.st_mode)})")
    return st


def read_bytes(path: Path, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The whole file, if it is a regular file of at most `limit` bytes."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise EngineError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {path}: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EngineError(f"{path} is not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise EngineError(f"{path} is {_size(st.st_size)}, more than the {_size(limit)} such a file can be")
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise EngineError(f"cannot read {path}: {exc}") from None
    if len(data) > limit:  # grew since the check
        raise EngineError(f"{path} is more than the {_size(limit)} such a file can be")
    return data


def read_text(path: Path, limit: int = SMALL_FILE_LIMIT) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EngineError(f"{path} is not UTF-8 text: {exc}") from None


def read_json_object(path: Path, limit: int = SMALL_FILE_LIMIT) -> dict:
    try:
        data = json.loads(read_text(path, limit))
    except (ValueError, RecursionError) as exc:
        raise EngineError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EngineError(f"{path} is not a JSON object")
    return data


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.0f} KB"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return name
    return "not a file"
