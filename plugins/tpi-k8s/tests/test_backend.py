"""What the backend accepts before anything is created, and where a task's storage lives."""

from __future__ import annotations

import pytest
from tpi_k8s.backend import K8sBackend, bucket_url, claim_of

from tpi_core import config
from tpi_core.backend import TaskRef
from tpi_core.errors import ConfigError, UsageError
from tpi_core.model import StorageSpec, Task, frozen_map

TASK_ID = "tpi-train-abcdefgh-12345678"


def task(**changes) -> Task:
    storage = StorageSpec(**changes.pop("storage", {}))
    return Task(name="train", cloud="k8s", script="#!/bin/sh\ntrue", id=TASK_ID,
                storage=storage, **changes)


def ref(container: str = "", **opts: str) -> TaskRef:
    return TaskRef(TASK_ID, "k8s", "us-west", "train", container, frozen_map(opts))


def test_validate_accepts_tpi_defaults():
    K8sBackend().validate(task())


@pytest.mark.parametrize(("changes", "match"), [
    ({"machine": "huge"}, "machine"),
    ({"region": "pool=a,b"}, "region"),
    ({"image": "Not An Image"}, "image"),
    ({"permission_set": "arn:aws:iam::1:role/x"}, "permission_set"),
    ({"tags": frozen_map({"bad key!": "v"})}, "tags"),
    ({"storage": {"container": "claim/"}}, "root"),
    ({"storage": {"container": "ftp://host/x"}}, "s3://"),
    ({"storage": {"container": "Bad_Claim"}}, "storage.container"),
    ({"storage": {"container": "claim/../x"}}, "unsafe"),
    ({"storage": {"container_opts": frozen_map({"zone": "a"})}}, "container_opts: zone"),
    ({"storage": {"container_opts": frozen_map({"access_mode": "ReadOnlyMany"})}},
     "access_mode"),
    ({"storage": {"container_opts": frozen_map({"size": "big"})}}, "size"),
])
def test_validate_refuses_in_one_line(changes, match):
    with pytest.raises(UsageError, match=match) as caught:
        K8sBackend().validate(task(**changes))
    assert "\n" not in str(caught.value)


def test_own_claims_follow_parallelism_and_disk_size():
    claim = claim_of(ref(), task())
    assert (claim.name, claim.sub_path, claim.owned) == (TASK_ID, TASK_ID, True)
    assert (claim.access_mode, claim.size_gb) == ("ReadWriteOnce", 1)
    claim = claim_of(ref(), task(parallelism=4, disk_size=50))
    assert (claim.access_mode, claim.size_gb) == ("ReadWriteMany", 50)
    claim = claim_of(ref(storage_class="fast", size="9", access_mode="ReadWriteMany"), task())
    assert (claim.storage_class, claim.size_gb, claim.access_mode) == ("fast", 9, "ReadWriteMany")


def test_an_existing_claim_with_a_sub_path():
    claim = claim_of(ref("shared-data/teams/ml/"))
    assert (claim.name, claim.sub_path, claim.owned) == ("shared-data", "teams/ml", False)
    assert claim_of(ref("shared-data")).sub_path == TASK_ID


def test_bucket_containers():
    assert bucket_url(ref()) == ""
    assert bucket_url(ref("shared-claim")) == ""
    assert bucket_url(ref("s3://bucket")) == f"s3://bucket/{TASK_ID}"
    assert bucket_url(ref("gs://bucket/runs/")) == "gs://bucket/runs"
    with pytest.raises(UsageError):
        bucket_url(ref("s3://"))


def test_a_bucket_task_has_no_claim_steps():
    backend = K8sBackend()
    steps = [s.description for s in backend.delete_steps(ref("s3://bucket"))]
    assert steps == [f"environment Secret {TASK_ID}", f"Job {TASK_ID}"]
    steps = [s.description for s in backend.delete_steps(ref("shared"))]
    assert steps == ["PersistentVolumeClaim shared", f"storage server {TASK_ID}-storage",
                     "task prefix on claim shared", f"environment Secret {TASK_ID}",
                     f"Job {TASK_ID}"]


def test_spot_on_kubernetes_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="key 'spot'.*'k8s' has no spot machines"):
        config.check_backend(task(spot=0.0), lambda cloud: K8sBackend())
