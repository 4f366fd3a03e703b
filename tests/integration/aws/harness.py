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
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from tpi_aws.userdata import parse
from tpi_core.boot.script import agent_argv

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
class Machine:
    """One instance played locally: its agent process and its metadata service."""

    instance_id: str
    process: subprocess.Popen
    imds: FakeImds
    log: Path
    exit_code: int | None = None

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the agent's session (a shutdown), then SIGKILL after ``grace``."""
        if self.process.poll() is None:
            _signal(self.process, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal(self.process, signal.SIGKILL)
                self.process.wait(10)
        _signal(self.process, signal.SIGKILL)  # whatever the script left behind
        self.exit_code = self.process.returncode
        self.imds.close()


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Ec2Player:
    """Runs the agent for every running instance of a tpi group in moto (see module doc)."""

    region: str
    root: Path
    env: dict[str, str]
    machines: dict[str, Machine] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.ec2 = boto3.client("ec2", region_name=self.region)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Ec2Player:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
        for machine in list(self.machines.values()):
            machine.stop(grace=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self.step()
            except Exception as exc:  # keep playing; the test reads the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def step(self) -> None:
        """Start agents for new running instances; stop those of instances gone."""
        running = {i["InstanceId"]: i for i in self._instances()}
        with self._lock:
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

    def _start(self, instance: dict) -> Machine:
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
        with log.open("wb") as out:
            process = subprocess.Popen(agent_argv(boot, sys.executable, str(workdir)),
                                       env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        return Machine(instance_id, process, imds, log)

    def preempt(self, instance_id: str, grace: float = 60) -> int:
        """Spot interruption: notice, wait for the agent to flush and exit, terminate."""
        machine = self.machines[instance_id]
        machine.imds.notice()
        machine.process.wait(grace)
        self.ec2.terminate_instances(InstanceIds=[instance_id])
        return machine.process.returncode

    def wait_for(self, predicate, timeout: float, what: str):
        """Poll ``predicate`` until it returns something true."""
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            value = predicate()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; harness errors: {self.errors}; "
                             f"agent logs: {self.agent_logs()}")

    def agent_logs(self) -> dict[str, str]:
        """What each agent printed (for failure messages)."""
        return {i: m.log.read_text(errors="replace")[-2000:] for i, m in self.machines.items()}
