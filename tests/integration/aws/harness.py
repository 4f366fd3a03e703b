"""A harness that plays EC2's part for moto: it runs the real agent where instances would be.

moto keeps instances as records only. :class:`Ec2Player` polls it for running instances of
tpi groups and, for each new one, reads the user-data of its launch template, starts the real
agent with what the user-data carries (``python -m tpi_core.agent ...``, the unit's own
command line: the agent claims its replica through its hooks), a fake instance metadata service
of its own on 127.0.0.1 and moto as every endpoint. An instance that leaves ``running`` in
moto takes its agent with it (SIGTERM, as a shutdown does). :meth:`Ec2Player.preempt` plays a
spot interruption: the two-minute notice in the metadata, then the termination in moto, after
which moto's group launches a replacement, which is the recovery path.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import boto3

from tpi_aws.userdata import parse
from tpi_core.boot.script import agent_argv
from tpi_core.testing.player import PlayedMachine, Player, start_agent

HERE = Path(__file__).parent


class FakeImds(http.server.ThreadingHTTPServer):
    """IMDSv2 of one instance on 127.0.0.1: token, instance id, region, spot notice."""

    daemon_threads = True

    def __init__(self, instance_id: str, region: str):
        super().__init__(("127.0.0.1", 0), _ImdsHandler)
        self.items = {"instance-id": instance_id, "placement/region": region}
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def notice(self) -> None:
        """The spot two-minute warning."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
        self.items["spot/instance-action"] = json.dumps({"action": "terminate",
                                                         "time": stamp})

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ImdsHandler(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds")
        self._reply(200 if ok else 400, "imds-token" if ok else "")

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != "imds-token":
            return self._reply(401, "")
        value = self.server.items.get(self.path.removeprefix("/latest/meta-data/"))
        self._reply(404, "") if value is None else self._reply(200, value)

    def _reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@dataclass
class Ec2Player(Player):
    """Runs the agent for every running instance of a tpi group in moto (see module doc)."""

    region: str
    root: Path
    env: dict[str, str]

    def __post_init__(self):
        super().__post_init__()
        self.ec2 = boto3.client("ec2", region_name=self.region)

    def step(self) -> None:
        """Start agents for new running instances; stop those of instances gone."""
        running = {i["InstanceId"]: i for i in self._instances()}
        for instance_id, instance in running.items():
            if instance_id not in self.machines:
                self.machines[instance_id] = self._start(instance)
        for instance_id, machine in self.machines.items():
            if instance_id not in running and machine.exit_code is None:
                machine.stop()

    def _instances(self) -> list[dict]:
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag:tpi:managed", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": ["running"]}])
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _start(self, instance: dict) -> PlayedMachine:
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        version = self.ec2.describe_launch_template_versions(
            LaunchTemplateId=tags["aws:ec2launchtemplate:id"],
            Versions=[tags.get("aws:ec2launchtemplate:version", "$Latest")])
        boot = parse(version["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"])
        region = boot["environment"]["AWS_REGION"]
        instance_id = instance["InstanceId"]
        imds = FakeImds(instance_id, region)
        workdir = self.root / instance_id / "task"
        workdir.mkdir(parents=True)
        log = self.root / instance_id / "agent.log"
        env = {**self.env, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
               "AWS_REGION": region, "AWS_DEFAULT_REGION": region}
        process = start_agent(agent_argv(boot, sys.executable, str(workdir)), env, log)
        return PlayedMachine(instance_id, process, imds, log)

    def preempt(self, instance_id: str, grace: float = 60) -> int:
        """Spot interruption: notice, wait for the agent to flush and exit, terminate."""
        machine = self.machines[instance_id]
        machine.metadata.notice()
        machine.process.wait(grace)
        self.ec2.terminate_instances(InstanceIds=[instance_id])
        return machine.process.returncode
