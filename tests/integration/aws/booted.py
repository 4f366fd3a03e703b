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
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from tests.boot.cloud import machine_cache
from tests.boot.nspawn import NspawnMachine
from tpi_aws.userdata import decode

from .harness import Ec2Player, FakeImds

ROLE_CREDENTIALS = {"AccessKeyId": "ASIAMACHINEROLE00001", "SecretAccessKey": "machine-role-secret",
                    "Token": "machine-role-session-token"}
"""What the metadata service hands the instance: the role's, never the test's credentials."""


@dataclass
class Booted:
    """One instance, booted."""

    instance_id: str
    machine: NspawnMachine
    imds: FakeImds

    def stop(self, grace: float = 30) -> None:
        """Terminate: an orderly poweroff, then a kill after ``grace`` seconds."""
        if self.machine.process is not None:
            self.machine.stop(grace)
        self.imds.close()


@dataclass
class BootedEc2(Ec2Player):
    """Boots every running instance of a tpi group in moto (see module doc): ``root`` holds
    the machines' files, ``env`` is what every unit of a machine sees, ``image`` the Debian
    root they boot."""

    image: Path | None = None
    terminated: set[str] = field(default_factory=set)

    def __post_init__(self):
        super().__post_init__()
        self.iam = boto3.client("iam", region_name=self.region)

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
            self.image, instance_id, decode(data["UserData"]),
            {**self.env, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url},
            self.root / instance_id, {str(machine_cache()): "/var/cache/tpi"})
        return Booted(instance_id, machine.start(), imds)

    def notice(self, instance_id: str) -> None:
        """The spot two-minute warning in the instance's metadata."""
        self.machines[instance_id].imds.notice()

    def terminate(self, instance_id: str) -> None:
        """Terminate the instance (moto's group then launches a replacement)."""
        self.terminated.add(instance_id)
        self.ec2.terminate_instances(InstanceIds=[instance_id])

    def agent_logs(self) -> dict[str, str]:
        """The tail of each machine's console (for failure messages)."""
        return self.consoles()

    def consoles(self) -> dict[str, str]:
        """The tail of each machine's console (for failure messages)."""
        return {i: b.machine.console()[-3000:] for i, b in self.machines.items()}
