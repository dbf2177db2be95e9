"""Where a checkpoint comes from: a local directory, or a hub id looked up offline.

A model spec is a local directory or a hub id ("ORG/NAME", optionally
"ORG/NAME@REVISION") found in the local Hugging Face cache
(`models--ORG--NAME/snapshots/REV/`). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import EngineError
from engine.files import read_text
from engine.paths import hub_cache_dir


def resolve_model_dir(spec: str) -> Path:
    """A local directory, or the snapshot of a hub id in the local Hugging Face cache."""
    try:
        path = Path(spec).expanduser()
    except RuntimeError as exc:  # "~user/..." for a user that does not exist
        raise EngineError(f"model path not found: {spec} ({exc})") from None
    if path.exists():
        if not path.is_dir():
            raise EngineError(f"model path is not a directory: {spec}")
        return path
    name, _, revision = spec.partition("@")
    parts = name.split("/")
    looks_like_hub_id = len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise EngineError(f"model path not found: {spec}")
    repo = hub_cache_dir() / f"models--{parts[0]}--{parts[1]}"
    snapshot = _find_snapshot(repo, revision or "main")
    if snapshot is None:
        raise EngineError(
            f"model {name!r} is not in the local Hugging Face cache ({hub_cache_dir()}); "
            "download it on a machine with network access or give a local directory"
        )
    return snapshot


def _find_snapshot(repo: Path, revision: str) -> Path | None:
    snapshots = repo / "snapshots"
    ref = repo / "refs" / revision
    if ref.exists():
        revision = read_text(ref, limit=4096).strip()
    if Path(revision).name != revision or revision in ("", ".", ".."):
        return None  # a snapshot is a folder of snapshots/, named by its commit
    if (snapshots / revision).is_dir():
        return snapshots / revision
    # No ref for "main" (e.g. a cache copied by hand): use the only snapshot there is.
    candidates = sorted(p for p in snapshots.glob("*") if p.is_dir()) if snapshots.is_dir() else []
    if revision == "main" and len(candidates) == 1:
        return candidates[0]
    return None
