"""The task model: frozen values with no I/O and no SDK types.

A :class:`Task` is what tasks.toml says once defaults are filled and aliases of the
backend name are normalised. :class:`TaskStatus` is what a task is doing, derived from the
reports its agents write plus what the backend sees of its machines.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

DEFAULT_FILE = "tasks.toml"
"""The tasks file commands read when none is named."""
DEFAULT_REGION = "us-west"
DEFAULT_MACHINE = "m"
DEFAULT_IMAGE = "ubuntu"
DEFAULT_TIMEOUT = 86400


class Secrets(Mapping[str, str]):
    """Environment values: a read-only mapping whose repr never shows a value."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None):
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Secrets({sorted(self._data)!r} values hidden)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items())))


def frozen_map(data: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """A read-only copy of ``data``."""
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True, slots=True)
class StorageSpec:
    """``[task.NAME.storage]``: what is uploaded, what comes back, where it lives."""

    workdir: str = ""
    output: str = ""
    exclude: tuple[str, ...] = ()
    container: str = ""
    container_opts: Mapping[str, str] = field(default_factory=frozen_map)


@dataclass(frozen=True, slots=True)
class Task:
    """One ``[task.NAME]`` of a tasks file, defaults filled in (TPI's ``iterative_task``)."""

    name: str
    cloud: str
    script: str
    id: str = ""
    region: str = DEFAULT_REGION
    machine: str = DEFAULT_MACHINE
    image: str = DEFAULT_IMAGE
    spot: float = -1.0
    disk_size: int = -1
    parallelism: int = 1
    timeout: int = DEFAULT_TIMEOUT
    environment: Secrets = field(default_factory=Secrets)
    tags: Mapping[str, str] = field(default_factory=frozen_map)
    permission_set: str = ""
    storage: StorageSpec = field(default_factory=StorageSpec)
    base_dir: Path = Path(".")
    source: str = "tasks.toml"
    unset: tuple[str, ...] = ()
    """``environment`` names given as ``""`` (copy from the local environment) that the
    local environment does not have: an error for apply, plan and validate."""
    region_given: bool = True
    """False when the tasks file has no ``region``: the backend's default region
    (:meth:`~tpi_core.backend.Backend.default_region`) may then replace ``DEFAULT_REGION``."""

    @property
    def workdir(self) -> Path | None:
        """The absolute local workdir, or None when nothing is uploaded."""
        if not self.storage.workdir:
            return None
        return (self.base_dir / self.storage.workdir).resolve()

    def spec_hash(self) -> str:
        """Digest of every field whose change replaces the task (TPI's ForceNew), the
        environment by its names only.

        ``storage.output`` and ``storage.exclude`` change in place. Environment values are
        compared through :meth:`environment_digest`, keyed: a digest anyone reading the
        spec could recompute would let a weak secret be guessed offline.
        """
        return self._digest(sorted(self.environment))

    def legacy_spec_hash(self) -> str:
        """The digest specs written before :meth:`environment_digest` hold (environment
        values hashed unkeyed into it): such a task is recognised, not replaced."""
        return self._digest(hashlib.sha256(
            json.dumps(dict(self.environment), sort_keys=True).encode()).hexdigest())

    def environment_digest(self, key: bytes) -> str:
        """HMAC-SHA256 of the environment values under ``key``, a random key per task that
        only the computer that applied it holds: without it the digest tells nothing."""
        data = json.dumps(dict(self.environment), sort_keys=True).encode()
        return hmac.new(key, data, hashlib.sha256).hexdigest()

    def _digest(self, environment: object) -> str:
        doc = {
            "cloud": self.cloud, "script": self.script, "region": self.region,
            "machine": self.machine, "image": self.image, "spot": self.spot,
            "disk_size": self.disk_size, "parallelism": self.parallelism,
            "timeout": self.timeout, "tags": dict(self.tags),
            "permission_set": self.permission_set,
            "environment": environment,
            "workdir": self.storage.workdir, "container": self.storage.container,
            "container_opts": dict(self.storage.container_opts),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class State(enum.StrEnum):
    """Task states (DESIGN.md section 4)."""

    QUEUED = "queued"
    PROVISIONING = "provisioning"
    BOOTING = "booting"
    """Machines are up but no agent has reported yet (a backend with ``AGENT``)."""
    UPLOADING = "uploading"
    RUNNING = "running"
    RECOVERING = "recovering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"
    DESTROYED = "destroyed"
    NOT_APPLIED = "not applied"
    """In the tasks file, and never applied from it (no storage, not in the index)."""

    @property
    def final(self) -> bool:
        """True for states a task never leaves on its own."""
        return self in (State.SUCCEEDED, State.FAILED, State.TIMED_OUT, State.DESTROYED,
                        State.NOT_APPLIED)


class ReplicaState(enum.StrEnum):
    """What one replica's agent last reported."""

    PENDING = "pending"
    RUNNING = "running"
    PREEMPTED = "preempted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"

    @property
    def final(self) -> bool:
        """True once the replica reported its result."""
        return self in (ReplicaState.SUCCEEDED, ReplicaState.FAILED, ReplicaState.TIMED_OUT)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """``reports/replica-N/status.json`` as the agent writes it."""

    index: int
    state: ReplicaState = ReplicaState.PENDING
    attempt: int = 0
    exit_code: int | None = None
    started: float | None = None
    finished: float | None = None
    reason: str = ""
    stops: int = 0
    """How many ``tpi stop`` the agent had seen at its last boot (``reports/stops.json``)."""
    resumes: int = 0
    """Boots that followed a ``tpi stop`` rather than a lost machine: no recoveries."""

    @property
    def recoveries(self) -> int:
        """Boots after the first that the cloud made to replace a lost machine."""
        return max(0, self.attempt - 1 - self.resumes)

    def to_json(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping) -> ReplicaStatus:
        """Read back what :meth:`to_json` wrote; unknown keys are ignored."""
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        known["state"] = ReplicaState(known.get("state", "pending"))
        return cls(**known)


def epoch_seconds(value: object) -> float:
    """A cloud's time (a datetime, or an ISO 8601 / RFC 3339 string) as epoch seconds; now
    when it is missing or unreadable, so an event without a time sorts as news."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            pass
    return value.timestamp() if isinstance(value, datetime.datetime) else time.time()


@dataclass(frozen=True, slots=True)
class Event:
    """A normalised event: from the agent or from the cloud (scaling activities, pods)."""

    time: float
    code: str
    message: str = ""
    replica: int | None = None
    source: str = "agent"

    def to_json(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """What ``tpi status`` shows for one task."""

    task_id: str
    name: str
    cloud: str
    state: State
    parallelism: int = 1
    replicas: tuple[ReplicaStatus, ...] = ()
    recoveries: int = 0
    machines: int = 0
    created: float | None = None
    deadline: float | None = None
    events: tuple[Event, ...] = ()
    reason: str = ""
    """Why the task is where it is, when a replica's state does not say (a failed boot)."""
    boot_failures: int = 0
    """Machines whose boot failed before the agent started."""
    booting_since: float | None = None
    """While ``booting``: when the first machine came up (the cloud's launch time, else
    ``created``)."""

    def count(self, state: ReplicaState) -> int:
        """How many replicas are in ``state``."""
        return sum(1 for r in self.replicas if r.state == state)

    def to_json(self) -> dict:
        """A JSON-ready dict (``tpi status --json``)."""
        doc = asdict(self)
        doc["counts"] = {s.value: self.count(s) for s in ReplicaState}
        return doc
