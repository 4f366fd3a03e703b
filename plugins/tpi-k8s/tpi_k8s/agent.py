"""The agent's Kubernetes hooks: the replica index is the pod's Job completion index.

Everything else is the default: environment values are already in the agent's environment
(``secretKeyRef`` variables of the pod), the preemption notice is the SIGTERM the kubelet
sends before a pod is deleted, evicted or preempted, and a finished agent just exits 0, which
completes its index of the Job without touching its siblings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from tpi_core.agent.hooks import AgentHooks
from tpi_core.errors import UsageError
from tpi_core.storage import Storage

INDEX_ENV = "JOB_COMPLETION_INDEX"


class K8sHooks(AgentHooks):
    """Hooks of the agent in an indexed Job's pod (``--hooks tpi_k8s.agent:K8sHooks``)."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = os.environ if environ is None else environ

    async def replica_index(self, storage: Storage, spec: Mapping) -> int | None:
        """``$JOB_COMPLETION_INDEX``, which the Job controller sets in an indexed Job's pods;
        a replacement pod gets the index of the pod it replaces."""
        value = self.environ.get(INDEX_ENV, "")
        if not value.isdigit():
            raise UsageError(f"${INDEX_ENV} is {value!r}: the agent must run in a pod of an "
                             "Indexed Job")
        index = int(value)
        if index >= int(spec.get("parallelism", 1)):
            raise UsageError(f"${INDEX_ENV}={index} is not a replica of this task "
                             f"(parallelism {spec.get('parallelism', 1)})")
        return index
