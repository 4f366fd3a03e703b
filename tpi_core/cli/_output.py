"""Results as ``--json`` prints them, for the commands that share a shape."""

from __future__ import annotations


def pulled_json(target, result) -> dict:
    """A pull's result (``pull``, and ``destroy``, which pulls first)."""
    return {"task": target.label, "id": target.ref.task_id, "downloaded": result.sent,
            "bytes": result.bytes_sent, "unchanged": result.unchanged,
            "kept": [{"path": key, "incoming": side or None} for key, side in result.kept],
            "skipped": list(result.skipped)}


def done_json(name: str, task_id: str, state: str) -> dict:
    """What ``stop`` and ``start`` did to a task."""
    return {"task": name, "id": task_id, "state": state}
