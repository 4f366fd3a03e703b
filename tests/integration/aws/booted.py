"""EC2 played with real boots: each instance is a Debian machine that runs its user-data.

:class:`BootedEc2` polls moto for running instances of tpi groups, as :class:`.harness.Ec2Player`
does, but boots each one: an nspawn container of the Debian root (:mod:`tests.boot`), with
systemd as PID 1, which runs the launch template's user-data as cloud-init would (unpacked
from gzip, as root, after network-online.target). Nothing of tpi is preinstalled: the boot
script brings uv, fetches the agent bundle from moto with the instance profile's
credentials, which only the instance's fake metadata service hands out, installs it and
starts the agent under systemd. What the machine gets from the harness is what EC2 gives
one: its metadata service (the endpoint, through ``AWS_EC2_METADATA_SERVICE_ENDPOINT``) and
the endpoints of the services (``AWS_ENDPOINT_URL``: moto), set for every unit by a systemd
drop-in, plus the CA bundle that reaches the package index from this machine.

A shutdown inside ends the container and the harness terminates the instance, as
``InstanceInitiatedShutdownBehavior=terminate`` does; an instance that leaves ``running`` in
moto (the agent left its group, a test terminated it) is powered off in an orderly way.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from tests.boot import rootfs
from tests.boot.nspawn import NspawnMachine
from tpi_aws.userdata import decode

from .harness import FakeImds

ROLE_CREDENTIALS = {"AccessKeyId": "ASIAMACHINEROLE00001", "SecretAccessKey": "machine-role-secret",
                    "Token": "machine-role-session-token"}
"""What the metadata service hands the instance: the role's, never the test's credentials."""


def cache() -> Path:
    """A host folder bound to every machine's /var/cache/tpi: uv and the wheels it fetched
    are downloaded once per test run instead of once per boot."""
    path = rootfs.cache_dir() / "machine-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Booted:
    """One instance, booted."""

    instance_id: str
    machine: NspawnMachine
    imds: FakeImds

    def stop(self, grace: float = 30) -> None:
        if self.machine.process is not None:
            self.machine.stop(grace)
        self.imds.close()


@dataclass
class BootedEc2:
    """Boots every running instance of a tpi group in moto (see module doc)."""

    region: str
    root: Path
    workdir: Path
    environment: dict[str, str]
    machines: dict[str, Booted] = field(default_factory=dict)
    terminated: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.ec2 = boto3.client("ec2", region_name=self.region)
        self.iam = boto3.client("iam", region_name=self.region)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> BootedEc2:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        for booted in list(self.machines.values()):
            booted.stop(grace=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self.step()
            except Exception as exc:  # keep playing; the test reads the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def step(self) -> None:
        """Boot new running instances, terminate those whose machine shut down, power off
        the machines of instances gone."""
        running = {i["InstanceId"]: i for i in self._instances()}
        for instance_id, instance in running.items():
            booted = self.machines.get(instance_id)
            if booted is None:
                self.machines[instance_id] = self._boot(instance)
            elif not booted.machine.running and instance_id not in self.terminated:
                self.terminated.add(instance_id)  # shut down inside: EC2 terminates it
                self.ec2.terminate_instances(InstanceIds=[instance_id])
        for instance_id, booted in self.machines.items():
            if instance_id not in running and booted.machine.running:
                booted.stop()

    def _instances(self) -> list[dict]:
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag:tpi:managed", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": ["running"]}])
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _boot(self, instance: dict) -> Booted:
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        data = self.ec2.describe_launch_template_versions(
            LaunchTemplateId=tags["aws:ec2launchtemplate:id"],
            Versions=[tags.get("aws:ec2launchtemplate:version", "$Latest")],
        )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        # moto does not give ASG instances their template's profile: read it from there
        profile = data["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1]
        role = self.iam.get_instance_profile(
            InstanceProfileName=profile)["InstanceProfile"]["Roles"][0]["RoleName"]
        instance_id = instance["InstanceId"]
        imds = FakeImds(instance_id, self.region)
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=6)
        imds.items["iam/security-credentials/"] = role
        imds.items[f"iam/security-credentials/{role}"] = json.dumps({
            "Code": "Success", "Type": "AWS-HMAC", **ROLE_CREDENTIALS,
            "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})
        machine = NspawnMachine(
            self.root, instance_id, decode(data["UserData"]),
            {**self.environment, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url},
            self.workdir / instance_id, {str(cache()): "/var/cache/tpi"})
        return Booted(instance_id, machine.start(), imds)

    def notice(self, instance_id: str) -> None:
        """The spot two-minute warning in the instance's metadata."""
        self.machines[instance_id].imds.notice()

    def terminate(self, instance_id: str) -> None:
        """Terminate the instance (moto's group then launches a replacement)."""
        self.terminated.add(instance_id)
        self.ec2.terminate_instances(InstanceIds=[instance_id])

    def wait_for(self, predicate, timeout: float, what: str):
        """Poll ``predicate`` until it returns something true."""
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            value = predicate()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; harness errors: {self.errors}; "
                             f"consoles: {self.consoles()}")

    def consoles(self) -> dict[str, str]:
        """The tail of each machine's console (for failure messages)."""
        return {i: b.machine.console()[-3000:] for i, b in self.machines.items()}
