"""Read-back: machines and normalised events from Auto Scaling and EC2 (fake client)."""

from __future__ import annotations

import datetime

import pytest
from tpi_aws.backend import activity_event, instance_events, observation

LAUNCHED = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def instance(ident: str, state: str, reason: str = "", transition: str = "") -> dict:
    return {"InstanceId": ident, "InstanceType": "m5.large", "LaunchTime": LAUNCHED,
            "Placement": {"AvailabilityZone": "us-west-1a"}, "State": {"Name": state},
            "StateReason": {"Message": reason}, "StateTransitionReason": transition}


def test_a_running_instance_has_its_launch_only():
    (event,) = instance_events(instance("i-1", "running"))
    assert (event.code, event.time, event.source) == ("instance-launched",
                                                      LAUNCHED.timestamp(), "aws")
    assert event.message == "i-1 (m5.large, us-west-1a)"


@pytest.mark.parametrize("zone", ["GMT", "UTC"])
def test_a_terminated_instance_says_when_and_why(zone):
    gone = instance("i-1", "terminated", "Server.SpotInstanceTermination: Spot interruption",
                    f"Service initiated (2026-01-02 03:10:00 {zone})")
    launched, terminated = instance_events(gone)
    assert terminated.code == "instance-terminated"
    assert terminated.time == datetime.datetime(2026, 1, 2, 3, 10, tzinfo=datetime.UTC).timestamp()
    assert terminated.message.endswith("Spot interruption")


def test_scaling_activities_become_events():
    event = activity_event({"StartTime": LAUNCHED, "StatusCode": "Failed",
                            "Description": "Launching a new EC2 instance",
                            "StatusMessage": "We currently do not have sufficient capacity"})
    assert event.code == "scaling-failed"
    assert event.message == ("Launching a new EC2 instance: We currently do not have "
                             "sufficient capacity")


class FakeClient:
    region = "us-west-1"

    def __init__(self, group):
        self.group = group

    async def call(self, service, operation, **params):
        if operation == "describe_auto_scaling_groups":
            return {"AutoScalingGroups": [self.group] if self.group else []}
        return {"Activities": [{"StartTime": LAUNCHED, "StatusCode": "Successful",
                                "Description": "Launching"}]}

    async def pages(self, service, operation, key, **params):
        return [{"Instances": [instance("i-1", "running"), instance("i-0", "terminated")]}]


@pytest.mark.anyio
async def test_observation_counts_live_members_only():
    group = {"DesiredCapacity": 3, "Instances": [
        {"LifecycleState": "InService"}, {"LifecycleState": "Pending"},
        {"LifecycleState": "Terminating"}]}
    seen = await observation(FakeClient(group), "tpi-x")
    assert (seen.exists, seen.machines, seen.desired) == (True, 2, 3)
    assert sorted(e.code for e in seen.events) == [
        "instance-launched", "instance-launched", "instance-terminated", "scaling-successful"]
    assert not (await observation(FakeClient(None), "tpi-x")).exists


@pytest.mark.anyio
async def test_observation_dates_the_first_live_machine_by_its_launch_time():
    group = {"DesiredCapacity": 2, "Instances": [
        {"InstanceId": "i-1", "LifecycleState": "InService"},
        {"InstanceId": "i-0", "LifecycleState": "Terminating"}]}
    assert (await observation(FakeClient(group), "tpi-x")).first_up == LAUNCHED.timestamp()
    group["Instances"] = group["Instances"][1:]  # only a leaving machine: nothing is up
    assert (await observation(FakeClient(group), "tpi-x")).first_up is None
