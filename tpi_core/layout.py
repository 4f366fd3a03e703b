"""Where things live under a task's storage prefix (DESIGN.md section 5).

    spec.json                         the task as applied: no environment values
    data/...                          mirror of the workdir
    reports/upload-manifest.json      what the CLI uploaded (sync manifest)
    reports/replica-N/status.json     the replica's last state (ReplicaStatus)
    reports/replica-N/boot-AAAA.log   timestamped output of boot (attempt) AAAA
    reports/replica-N/boot-AAAA.events.jsonl   the agent's events of that boot
    reports/replica-N/manifest.json   what this replica's agent synced (sync manifest)
    reports/stops.json                how many times ``tpi stop`` stopped the task: a boot
                                      after one resumes it, and is no recovery
    reports/boot-failed/NAME.log      the log of a machine whose boot failed before its agent
                                      started (written by the boot script, NAME: time-host)
"""

from __future__ import annotations

SPEC = "spec.json"
DATA = "data"
REPORTS = "reports"
UPLOAD_MANIFEST = "reports/upload-manifest.json"
STOPS = "reports/stops.json"
BOOT_FAILED = "reports/boot-failed"


def replica_prefix(index: int) -> str:
    """``reports/replica-N``."""
    return f"{REPORTS}/replica-{index}"


def status_key(index: int) -> str:
    """Key of a replica's status.json."""
    return f"{replica_prefix(index)}/status.json"


def log_key(index: int, attempt: int) -> str:
    """Key of one boot's log."""
    return f"{replica_prefix(index)}/boot-{attempt:04d}.log"


def events_key(index: int, attempt: int) -> str:
    """Key of one boot's events."""
    return f"{replica_prefix(index)}/boot-{attempt:04d}.events.jsonl"


def manifest_key(index: int) -> str:
    """Key of a replica's sync manifest."""
    return f"{replica_prefix(index)}/manifest.json"


def parse_report_key(key: str) -> tuple[int, str] | None:
    """``reports/replica-3/boot-0002.log`` -> ``(3, "boot-0002.log")``; None otherwise."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != REPORTS or not parts[1].startswith("replica-"):
        return None
    index = parts[1].removeprefix("replica-")
    return (int(index), parts[2]) if index.isdigit() else None
