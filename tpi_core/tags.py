"""tpi's own tags on a task's cloud resources, and a task found again from them.

Every resource of a task carries the task id and ``managed=true``, and where it can, the
task's name and ``storage.container`` (and, where the cloud has no region of its own, the
region): with these alone ``tpi list`` and ``tpi destroy`` find a task from another computer.
A cloud spells the keys its own way (:class:`OwnTags`); the task's own tags never override
them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tpi_core.backend import TaskRef
from tpi_core.identifier import is_task_id


@dataclass(frozen=True, slots=True)
class OwnTags:
    """The keys of tpi's own tags on one cloud (``tpi:task``, ``tpi.dev/task``...)."""

    task: str
    managed: str
    name: str
    container: str
    region: str = ""
    """Empty when the cloud's resources have a region of their own."""

    def ids(self, task_id: str) -> dict[str, str]:
        """The tags that identify a task's resources: its id, and managed by tpi."""
        return {self.task: task_id, self.managed: "true"}

    def about(self, name: str = "", container: str = "", region: str = "") -> dict[str, str]:
        """The tags that describe the task, those with a value."""
        keys = {self.name: name, self.container: container, self.region: region}
        return {k: v for k, v in keys.items() if k and v}

    def tags(self, task_id: str, tags: Mapping[str, str], name: str = "",
             container: str = "", region: str = "") -> dict[str, str]:
        """The tags of every resource of a task: the task's, then tpi's own, which win."""
        return {**tags, **self.ids(task_id), **self.about(name, container, region)}

    def ref(self, tags: Mapping[str, str], cloud: str, region: str = "") -> TaskRef | None:
        """The task a resource with these tags belongs to; None when it is not a task's.
        ``region`` is the resource's own (when :attr:`region` is a key, its tag wins)."""
        task_id = tags.get(self.task, "")
        if not is_task_id(task_id):
            return None
        if self.region:
            region = tags.get(self.region, region)
        return TaskRef(task_id, cloud, region, tags.get(self.name, ""),
                       tags.get(self.container, ""))

    def found(self, tagged: Iterable[Mapping[str, str]], prefixes: Iterable[str], cloud: str,
              region: str = "") -> list[TaskRef]:
        """The tasks of one region: from the tags of resources (a group, a scale set), then
        from the task prefixes of tpi's own bucket that no resource names (a task whose
        machines are gone but whose storage stays)."""
        refs: dict[str, TaskRef] = {}
        for tags in tagged:
            ref = self.ref(tags, cloud, region)
            if ref is not None:
                refs.setdefault(ref.task_id, ref)
        for prefix in prefixes:
            if is_task_id(prefix) and prefix not in refs:
                refs[prefix] = TaskRef(prefix, cloud, region)
        return list(refs.values())
