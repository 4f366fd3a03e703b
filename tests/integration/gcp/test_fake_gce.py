"""The GCE fake driven through the real ``google.cloud.compute_v1`` clients (and plain HTTP for
IAM, Resource Manager and Secret Manager): the calls the GCP backend makes answer as GCE
answers them, so the backend's tests can trust it."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import BadRequest, Conflict, Forbidden, NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from .fake_gce import FakeGce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PROJECT, REGION = "proj-1", "us-west1"
OPERATIONS = {"global_operations": compute_v1.GlobalOperationsClient,
              "region_operations": compute_v1.RegionOperationsClient,
              "zone_operations": compute_v1.ZoneOperationsClient}


@pytest.fixture
def gce():
    with FakeGce() as fake:
        yield fake


@pytest.fixture
def connect():
    """Makes compute clients for a fake, operation polling included (EMULATORS.md: the
    operation clients a compute client makes by itself ignore ``client_options``)."""
    made = []

    def make(cls, fake: FakeGce):
        options = ClientOptions(api_endpoint=fake.url)
        client = cls(credentials=AnonymousCredentials(), client_options=options)
        made.append(client)
        for key, op_cls in OPERATIONS.items():
            made.append(op_cls(credentials=AnonymousCredentials(), client_options=options))
            client._transport._extended_operations_services[key] = made[-1]
        return client

    yield make
    for client in made:
        client.transport.close()


def call(fake: FakeGce, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One JSON request to the fake: (status, body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(fake.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def firewall(name: str) -> compute_v1.Firewall:
    return compute_v1.Firewall(
        name=name, network="global/networks/default", direction="INGRESS", priority=2,
        description="tpi task t1", target_tags=[name], source_ranges=["0.0.0.0/0"],
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22", "80"])])


def spot_template(name: str) -> compute_v1.InstanceTemplate:
    properties = compute_v1.InstanceProperties(
        machine_type="n1-standard-4", labels={"tpi-task": "t1", "team": "ml"},
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT", automatic_restart=False,
                                         on_host_maintenance="TERMINATE",
                                         instance_termination_action="DELETE"),
        guest_accelerators=[compute_v1.AcceleratorConfig(accelerator_type="nvidia-tesla-t4",
                                                         accelerator_count=1)],
        metadata=compute_v1.Metadata(items=[compute_v1.Items(key="startup-script",
                                                             value="#!/bin/sh\necho hi")]),
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=(
            compute_v1.AttachedDiskInitializeParams(
                source_image="projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts")))],
        network_interfaces=[compute_v1.NetworkInterface(
            network="global/networks/default",
            access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")])])
    return compute_v1.InstanceTemplate(name=name, properties=properties)


def mig(name: str, template: str, size: int) -> compute_v1.InstanceGroupManager:
    return compute_v1.InstanceGroupManager(
        name=name, base_instance_name=name, target_size=size,
        instance_template=f"projects/{PROJECT}/global/instanceTemplates/{template}")


def managed(migs, name: str) -> list[compute_v1.ManagedInstance]:
    return list(migs.list_managed_instances(project=PROJECT, region=REGION,
                                            instance_group_manager=name))


def test_spot_mig_lifecycle(gce, connect):
    firewalls = connect(compute_v1.FirewallsClient, gce)
    templates = connect(compute_v1.InstanceTemplatesClient, gce)
    migs = connect(compute_v1.RegionInstanceGroupManagersClient, gce)
    instances = connect(compute_v1.InstancesClient, gce)

    firewalls.insert(project=PROJECT, firewall_resource=firewall("tpi-t1-i2")).result()
    assert firewalls.get(project=PROJECT, firewall="tpi-t1-i2").allowed[0].ports == ["22", "80"]
    templates.insert(project=PROJECT, instance_template_resource=spot_template("tpi-t1")).result()
    got = templates.get(project=PROJECT, instance_template="tpi-t1").properties
    assert got.scheduling.provisioning_model == "SPOT"
    assert got.scheduling.instance_termination_action == "DELETE"
    assert got.labels == {"tpi-task": "t1", "team": "ml"}
    assert got.guest_accelerators[0].accelerator_count == 1
    assert got.metadata.items[0].key == "startup-script"

    operation = migs.insert(project=PROJECT, region=REGION,
                            instance_group_manager_resource=mig("tpi-t1", "tpi-t1", 2))
    operation.result()
    assert operation.operation_type == "insert"
    assert operation.target_link.endswith(f"/regions/{REGION}/instanceGroupManagers/tpi-t1")
    first = managed(migs, "tpi-t1")
    assert len(first) == 2
    assert {(m.instance_status, m.current_action) for m in first} == {("RUNNING", "NONE")}
    assert all(m.name.startswith("tpi-t1-") and len(m.name) == len("tpi-t1-") + 4 for m in first)

    vm = instances.get(project=PROJECT, zone=f"{REGION}-a", instance=first[0].name)
    assert vm.status == "RUNNING" and vm.labels["tpi-task"] == "t1"
    assert vm.scheduling.provisioning_model == "SPOT"
    assert vm.network_interfaces[0].access_configs[0].nat_i_p

    migs.delete_instances(
        project=PROJECT, region=REGION, instance_group_manager="tpi-t1",
        region_instance_group_managers_delete_instances_request_resource=(
            compute_v1.RegionInstanceGroupManagersDeleteInstancesRequest(
                instances=[first[0].instance]))).result()
    assert migs.get(project=PROJECT, region=REGION,
                    instance_group_manager="tpi-t1").target_size == 1
    assert [m.name for m in managed(migs, "tpi-t1")] == [first[1].name]
    with pytest.raises(NotFound):
        instances.get(project=PROJECT, zone=f"{REGION}-a", instance=first[0].name)

    replacement = gce.preempt(first[1].name)
    assert [m.name for m in managed(migs, "tpi-t1")] == [replacement] != [first[1].name]
    assert migs.get(project=PROJECT, region=REGION,
                    instance_group_manager="tpi-t1").target_size == 1

    instances.delete(project=PROJECT, zone=f"{REGION}-a", instance=replacement).result()
    [recreated] = managed(migs, "tpi-t1")
    assert recreated.name != replacement

    migs.resize(project=PROJECT, region=REGION, instance_group_manager="tpi-t1",
                size=0).result()
    assert managed(migs, "tpi-t1") == []
    assert "instances" not in gce.resources()

    migs.delete(project=PROJECT, region=REGION, instance_group_manager="tpi-t1").result()
    templates.delete(project=PROJECT, instance_template="tpi-t1").result()
    firewalls.delete(project=PROJECT, firewall="tpi-t1-i2").result()
    assert gce.resources() == {}
    resize = f"/compute/v1/projects/{PROJECT}/regions/{REGION}/instanceGroupManagers/tpi-t1/resize"
    assert ("POST", resize) in gce.requests


def test_errors_as_gce_answers_them(gce, connect):
    firewalls = connect(compute_v1.FirewallsClient, gce)
    templates = connect(compute_v1.InstanceTemplatesClient, gce)
    migs = connect(compute_v1.RegionInstanceGroupManagersClient, gce)

    firewalls.insert(project=PROJECT, firewall_resource=firewall("fw")).result()
    with pytest.raises(Conflict) as conflict:
        firewalls.insert(project=PROJECT, firewall_resource=firewall("fw"))
    assert conflict.value.errors[0]["reason"] == "alreadyExists"
    with pytest.raises(NotFound):
        firewalls.get(project=PROJECT, firewall="missing")
    with pytest.raises(NotFound):
        templates.delete(project=PROJECT, instance_template="missing")
    with pytest.raises(BadRequest):
        firewalls.insert(project=PROJECT, firewall_resource=firewall("Not_A_Name"))

    # A MIG from a missing template: the call succeeds, its operation carries the error.
    operation = migs.insert(project=PROJECT, region=REGION,
                            instance_group_manager_resource=mig("m", "missing", 1))
    with pytest.raises(NotFound):
        operation.result()
    assert operation.error.errors[0].code == "RESOURCE_NOT_FOUND"
    assert operation.http_error_message == "NOT FOUND"
    with pytest.raises(NotFound):
        migs.get(project=PROJECT, region=REGION, instance_group_manager="m")

    templates.insert(project=PROJECT, instance_template_resource=spot_template("t")).result()
    migs.insert(project=PROJECT, region=REGION,
                instance_group_manager_resource=mig("m", "t", 1)).result()
    with pytest.raises(BadRequest) as in_use:
        templates.delete(project=PROJECT, instance_template="t")
    assert in_use.value.errors[0]["reason"] == "resourceInUseByAnotherResource"
    with pytest.raises(BadRequest):
        migs.delete_instances(
            project=PROJECT, region=REGION, instance_group_manager="m",
            region_instance_group_managers_delete_instances_request_resource=(
                compute_v1.RegionInstanceGroupManagersDeleteInstancesRequest(
                    instances=["zones/us-west1-a/instances/stranger"])))

    gce.fail("POST", r"/global/firewalls$", 403, "quotaExceeded", "Quota 'FIREWALLS' exceeded")
    with pytest.raises(Forbidden, match="FIREWALLS"):
        firewalls.insert(project=PROJECT, firewall_resource=firewall("fw2"))
    firewalls.insert(project=PROJECT, firewall_resource=firewall("fw2")).result()

    assert call(gce, "GET", f"/compute/v1/projects/{PROJECT}/global/networks")[0] == 501


def test_list_filters(gce, connect):
    firewalls = connect(compute_v1.FirewallsClient, gce)
    templates = connect(compute_v1.InstanceTemplatesClient, gce)
    for name in ("tpi-a-i1", "tpi-a-e1", "other"):
        firewalls.insert(project=PROJECT, firewall_resource=firewall(name)).result()
    templates.insert(project=PROJECT, instance_template_resource=spot_template("tpi-a")).result()

    assert len(list(firewalls.list(project=PROJECT))) == 3
    def names(client, request_type, expression):
        return [item.name for item in client.list(
            request=request_type(project=PROJECT, filter=expression))]

    assert names(firewalls, compute_v1.ListFirewallsRequest, 'name eq "tpi-a-.*"') == [
        "tpi-a-i1", "tpi-a-e1"]
    assert names(firewalls, compute_v1.ListFirewallsRequest, "(name != other)") == [
        "tpi-a-i1", "tpi-a-e1"]
    by_label = compute_v1.ListInstanceTemplatesRequest
    assert names(templates, by_label, 'properties.labels.tpi-task = "t1"') == ["tpi-a"]
    assert names(templates, by_label, "properties.labels.tpi-task = t2") == []
    assert names(templates, by_label, "properties.labels.team = ml AND name eq tpi-.*") == [
        "tpi-a"]
    with pytest.raises(BadRequest):
        names(firewalls, compute_v1.ListFirewallsRequest, 'name:"tpi" OR name = x')


def test_pending_operations_are_polled_on_the_fake(connect):
    with FakeGce(pending_operations=True) as gce:
        firewalls = connect(compute_v1.FirewallsClient, gce)
        templates = connect(compute_v1.InstanceTemplatesClient, gce)
        migs = connect(compute_v1.RegionInstanceGroupManagersClient, gce)
        operation = firewalls.insert(project=PROJECT, firewall_resource=firewall("fw"))
        assert operation.status == compute_v1.Operation.Status.RUNNING
        assert operation.done()  # done() polls the operation once
        assert operation.status == compute_v1.Operation.Status.DONE
        templates.insert(project=PROJECT,
                         instance_template_resource=spot_template("t")).result(timeout=10)
        operation = migs.insert(project=PROJECT, region=REGION,
                                instance_group_manager_resource=mig("m", "t", 1))
        assert operation.status == compute_v1.Operation.Status.RUNNING
        operation.result(timeout=10)
        assert operation.status == compute_v1.Operation.Status.DONE
        polled = [path for method, path in gce.requests if "/operations/" in path]
        assert len(polled) == 3
        assert polled[2].startswith(f"/compute/v1/projects/{PROJECT}/regions/{REGION}/operations/")
        assert len(managed(migs, "m")) == 1


def test_service_accounts_and_project_policy(gce):
    accounts = f"/v1/projects/{PROJECT}/serviceAccounts"
    email = f"tpi-t1-runner@{PROJECT}.iam.gserviceaccount.com"
    status, account = call(gce, "POST", accounts, {
        "accountId": "tpi-t1-runner", "serviceAccount": {"displayName": "tpi task t1"}})
    assert status == 200 and account["email"] == email
    assert account["displayName"] == "tpi task t1"
    assert call(gce, "GET", f"{accounts}/{email}")[1]["uniqueId"] == account["uniqueId"]
    assert call(gce, "GET", f"/v1/projects/-/serviceAccounts/{email}")[0] == 200
    status, error = call(gce, "POST", accounts, {"accountId": "tpi-t1-runner"})
    assert status == 409 and error["error"]["errors"][0]["reason"] == "alreadyExists"
    assert call(gce, "POST", accounts, {"accountId": "x" * 31})[0] == 400

    policy_path = f"/v1/projects/{PROJECT}"
    policy = call(gce, "POST", f"{policy_path}:getIamPolicy", {})[1]
    assert "bindings" not in policy
    policy["bindings"] = [{"role": "roles/storage.objectAdmin",
                           "members": [f"serviceAccount:{email}"]}]
    status, stored = call(gce, "POST", f"{policy_path}:setIamPolicy", {"policy": policy})
    assert status == 200 and stored["etag"] != policy["etag"]
    assert call(gce, "POST", f"{policy_path}:getIamPolicy", {})[1] == stored
    status, error = call(gce, "POST", f"{policy_path}:setIamPolicy", {"policy": policy})
    assert status == 409 and error["error"]["status"] == "ABORTED"

    assert call(gce, "DELETE", f"{accounts}/{email}") == (200, {})
    assert call(gce, "GET", f"{accounts}/{email}")[0] == 404
    deleted = f"deleted:serviceAccount:{email}?uid={account['uniqueId']}"
    left = f"projects/{PROJECT} roles/storage.objectAdmin {deleted}"
    assert gce.resources() == {"bindings": [left]}
    call(gce, "POST", f"{policy_path}:setIamPolicy", {"policy": {"bindings": []}})
    assert gce.resources() == {}


def test_secrets(gce):
    secrets = f"/v1/projects/{PROJECT}/secrets"
    body = {"replication": {"automatic": {}}, "labels": {"tpi-task": "t1"}}
    status, secret = call(gce, "POST", f"{secrets}?secretId=tpi-t1-env", body)
    assert status == 200 and secret["name"] == f"projects/{PROJECT}/secrets/tpi-t1-env"
    assert secret["labels"] == {"tpi-task": "t1"}
    status, error = call(gce, "POST", f"{secrets}?secretId=tpi-t1-env", body)
    assert status == 409 and error["error"]["status"] == "ALREADY_EXISTS"
    assert call(gce, "GET", f"{secrets}?filter=labels.tpi-task%3Dt1")[1]["secrets"] == [secret]

    assert call(gce, "GET", f"{secrets}/tpi-t1-env/versions/latest:access")[0] == 404
    env = base64.b64encode(json.dumps({"TOKEN": "s3cret"}).encode()).decode()
    status, version = call(gce, "POST", f"{secrets}/tpi-t1-env:addVersion",
                           {"payload": {"data": env}})
    assert status == 200 and version["name"].endswith("/versions/1") and "payload" not in version
    status, latest = call(gce, "GET", f"{secrets}/tpi-t1-env/versions/latest:access")
    assert json.loads(base64.b64decode(latest["payload"]["data"])) == {"TOKEN": "s3cret"}
    assert call(gce, "POST", f"{secrets}/tpi-t1-env:addVersion",
                {"payload": {"data": "%%%"}})[0] == 400

    assert gce.resources() == {"secrets": [f"projects/{PROJECT}/secrets/tpi-t1-env"]}
    assert call(gce, "DELETE", f"{secrets}/tpi-t1-env") == (200, {})
    assert call(gce, "DELETE", f"{secrets}/tpi-t1-env")[0] == 404
    assert call(gce, "GET", f"{secrets}/tpi-t1-env/versions/latest:access")[0] == 404
    assert gce.resources() == {}
