"""bootfetch.sh, the fetcher in shell (curl --aws-sigv4) of an image with no python3.

``tpi_fetch VERB ARGS...`` runs under bash as a subprocess with only the environment a
machine has (no AWS credentials): its credentials come from test_bootfetch's fake IMDSv2,
its requests go to moto (through the fault proxy, which records what was sent). moto checks
no signature, so one real request of curl is also captured at a small server here and its
Authorization compared with botocore's for the same request and time.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tpi_core.testing.emulators import REGION, free_port

def _sibling(name: str):
    # this folder is no package: the Python fetcher's tests are loaded by their path
    spec = importlib.util.spec_from_file_location(f"_tpi_aws_{name}",
                                                  Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_python = _sibling("test_bootfetch")
INSTANCE, KEY_ID, SECRET, TOKEN = _python.INSTANCE, _python.KEY_ID, _python.SECRET, _python.TOKEN
one_line = _python.one_line
imds, proxy = _python.imds, _python.proxy  # pytest fixtures
# the same test as for bootfetch.py, collected here with this module's `run` (the shell)
test_leave_lowers_the_desired_capacity = _python.test_leave_lowers_the_desired_capacity

SCRIPT = Path(__file__).parents[1] / "tpi_aws" / "bootfetch.sh"


class Capture:
    """An HTTP/1.1 server on 127.0.0.1 that records each request (method, target, headers
    lower-cased, body) and answers ``status`` with ``body``, ``delay`` seconds late."""

    def __init__(self):
        self.requests, self.status, self.body, self.delay = [], 200, b"", 0.0
        self.statuses = []  # answered first, one a request, before ``status``
        self.arrived = threading.Event()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                capture.requests.append((self.command, self.path,
                                         {k.lower(): v for k, v in self.headers.items()}, body))
                capture.arrived.set()
                time.sleep(capture.delay)
                self.send_response(capture.statuses.pop(0) if capture.statuses
                                   else capture.status)
                self.send_header("Content-Length", str(len(capture.body)))
                self.end_headers()
                self.wfile.write(capture.body)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capture():
    server = Capture()
    yield server
    server.close()


@pytest.fixture
def run(tmp_path, imds, proxy, bucket):
    """``run(verb, *args)``: ``tpi_fetch`` under bash, as on a machine: no AWS_* but the
    metadata and endpoint overrides (moto through the proxy unless ``env`` says otherwise),
    ``options`` (shell commands) first; returns the CompletedProcess, or the Popen with
    ``wait=False``."""
    config = tmp_path / "fetch.json"
    config.write_text(json.dumps({"bucket": bucket, "region": REGION, "group": "tpi-g"}))

    def run(*args, env=None, wait=True, options=""):
        argv = ["bash", "-c", f'{options}source "{SCRIPT}"; tpi_fetch "$@"', "_", *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TPI_FETCH_CONFIG": str(config),
               "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_ENDPOINT_URL": proxy.url,
               **(env or {})}
        if not wait:
            return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        return subprocess.run(argv, env=env, check=False, capture_output=True, text=True,
                              timeout=60)

    return run


def test_get_3_mb_round_trips_with_the_instance_role(run, proxy, bucket, tmp_path, imds):
    data = os.urandom(3 << 20)
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key="work dir/a+b~c.bin",
                                                      Body=data)
    dest = tmp_path / "out.bin"
    result = run("get", "work dir/a+b~c.bin", str(dest))
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    assert dest.read_bytes() == data
    assert not Path(str(dest) + ".part").exists()
    assert imds.requests[0] == ("PUT", "/latest/api/token")
    method, target, headers = proxy.seen[-1]
    # the key goes encoded as bootfetch.py sends it (a raw + would be a space to S3)
    assert (method, target) == ("GET", f"/{bucket}/work%20dir/a%2Bb~c.bin")
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
    assert f"/{REGION}/s3/aws4_request" in headers["authorization"]
    assert headers["x-amz-security-token"] == TOKEN
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


def test_missing_key_exits_3_with_one_line(run, tmp_path):
    result = run("get", "no/such/key", str(tmp_path / "x"))
    assert result.returncode == 3
    assert one_line(result) == "bootfetch: get no/such/key: HTTP 404"
    assert not list(tmp_path.glob("x*"))


def test_put_then_get(run, bucket, tmp_path):
    src = tmp_path / "status.json"
    src.write_text('{"state": "running"}\n')
    result = run("put", str(src), "reports/replica-0/status [1].json")
    assert result.returncode == 0, result.stderr
    head = boto3.client("s3", region_name=REGION).get_object(
        Bucket=bucket, Key="reports/replica-0/status [1].json")
    assert head["ContentType"] == "text/plain"
    assert head["Body"].read() == src.read_bytes()
    result = run("get", "reports/replica-0/status [1].json", str(tmp_path / "back"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_count_reads_one_page(run, proxy, bucket):
    """Unlike bootfetch.py, the shell counts the first page only (up to 1000 keys): the
    boot counts a task's failed boots, which stop at a handful."""
    s3 = boto3.client("s3", region_name=REGION)
    for key in ["runs/a b/1", "runs/a b/2", "runs/a b/3", "runs/a c", "other/1"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    result = run("count", "runs/a b/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
    lists = [t for m, t, _ in proxy.seen if "list-type=2" in t]
    assert lists == [f"/{bucket}?list-type=2&prefix=runs%2Fa%20b%2F"]
    assert run("count", "runs/").stdout.strip() == "4"
    assert run("count", "nothing/").stdout.strip() == "0"


def test_under_the_boot_s_shell_options(run, bucket, tmp_path):
    """boot.sh runs with ``set -uo pipefail``: no unset variable, no failed pipeline."""
    src = tmp_path / "s"
    src.write_bytes(os.urandom(1000))
    options = "set -uo pipefail; "
    assert run("put", str(src), "boot/+k", options=options).returncode == 0
    result = run("get", "boot/+k", str(tmp_path / "back"), options=options)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    assert run("count", "boot/", options=options).stdout.strip() == "1"
    assert run("count", "none/", options=options).stdout.strip() == "0"
    result = run("get", "boot/none", str(tmp_path / "n"), options=options)
    assert result.returncode == 3
    assert one_line(result) == "bootfetch: get boot/none: HTTP 404"


# the signature, against botocore's ---------------------------------------------------------

def botocore_authorization(monkeypatch, auth_class, service, seen, unsigned=False):
    """botocore's Authorization for the request ``seen`` (method, target, headers, body) at
    the server, signed at its x-amz-date with the fake metadata service's credentials."""
    method, target, headers, body = seen
    when = datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    url = f"http://{headers['host']}{target}"
    kept = {k: v for k, v in headers.items() if k in {
        "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "content-type"}}
    request = AWSRequest(method=method, url=url, headers=kept, data=body)
    if unsigned:
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    auth_class(Credentials(KEY_ID, SECRET, TOKEN), service, REGION).add_auth(request)
    assert urlsplit(url).netloc == headers["host"]
    assert request.headers["X-Amz-Date"] == headers["x-amz-date"]
    return request.headers["Authorization"]


@pytest.mark.parametrize(("verb", "args", "method", "target"), [
    ("get", ("work dir/a+b~c é[1].tar.gz", "DEST"), "GET",
     "/BUCKET/work%20dir/a%2Bb~c%20%C3%A9%5B1%5D.tar.gz"),
    ("put", ("SRC", "reports/boot-failed/1700000000-ip-10-0-0-1-42.log"), "PUT",
     "/BUCKET/reports/boot-failed/1700000000-ip-10-0-0-1-42.log"),
    ("count", ("reports/boot-failed/a b+c/",), "GET",
     "/BUCKET?list-type=2&prefix=reports%2Fboot-failed%2Fa%20b%2Bc%2F"),
], ids=["get", "put", "count"])
def test_s3_signature_equals_botocores(run, capture, bucket, tmp_path, monkeypatch, verb,
                                       args, method, target):
    src = tmp_path / "src.log"
    src.write_bytes(b"line one\nline  two\n")
    args = [{"DEST": str(tmp_path / "dest"), "SRC": str(src)}.get(a, a) for a in args]
    capture.body = b"<ListBucketResult></ListBucketResult>" if verb == "count" else b""
    result = run(verb, *args, env={"AWS_ENDPOINT_URL_S3": capture.url})
    assert result.returncode == 0, result.stderr
    [seen] = capture.requests
    assert seen[:2] == (method, target.replace("BUCKET", bucket))
    headers = seen[2]
    if verb == "put":
        assert seen[3] == src.read_bytes()
        assert headers["x-amz-content-sha256"] == hashlib.sha256(seen[3]).hexdigest()
        assert headers["content-type"] == "text/plain"
    else:
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert headers["x-amz-security-token"] == TOKEN
    theirs = botocore_authorization(monkeypatch, botocore.auth.S3SigV4Auth, "s3", seen,
                                    unsigned=verb != "put")
    assert headers["authorization"] == theirs


def test_autoscaling_signature_equals_botocores(run, capture, monkeypatch):
    result = run("leave", env={"AWS_ENDPOINT_URL_AUTO_SCALING": capture.url})
    assert result.returncode == 0, result.stderr
    [seen] = capture.requests
    method, target, headers, body = seen
    assert (method, target) == ("POST", "/")
    assert body == (f"Action=TerminateInstanceInAutoScalingGroup&InstanceId={INSTANCE}"
                    "&ShouldDecrementDesiredCapacity=true&Version=2011-01-01").encode()
    assert "x-amz-content-sha256" not in headers
    theirs = botocore_authorization(monkeypatch, botocore.auth.SigV4Auth, "autoscaling", seen)
    assert headers["authorization"] == theirs


# the secrets ---------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (command substitutions and pipelines fork subshells)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        children = [p for p, parent in parents.items() if parent == todo[-1]]
        todo.pop()
        found += children
        todo += children
    return found


def test_no_secret_in_the_arguments_of_curl(run, capture, tmp_path):
    """While a get is in flight, no curl under the bash has the secret key or the session
    token in its arguments or its environment (they reach curl on its stdin)."""
    capture.delay, capture.body = 1.0, b"payload"
    process = run("get", "k", str(tmp_path / "k"), env={"AWS_ENDPOINT_URL_S3": capture.url},
                  wait=False)
    try:
        assert capture.arrived.wait(10)
        seen = {}
        for pid in descendants(process.pid):
            try:
                seen[pid] = ((Path(f"/proc/{pid}/cmdline").read_bytes(),
                              Path(f"/proc/{pid}/environ").read_bytes()))
            except OSError:
                pass
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert (tmp_path / "k").read_bytes() == b"payload"
    curls = [argv for argv, _env in seen.values() if argv.startswith(b"curl\0")]
    assert any(b"--aws-sigv4" in argv for argv in curls), seen
    for argv, env in seen.values():
        for secret in (SECRET, TOKEN):
            assert secret.encode() not in argv and secret.encode() not in env


@pytest.mark.parametrize(("verb", "line"), [
    ("get", "bootfetch: get k: HTTP 403"), ("put", "bootfetch: put k: HTTP 403"),
    ("count", "bootfetch: count k/: HTTP 403"), ("leave", "bootfetch: leave: HTTP 400")])
def test_an_error_is_one_line_without_the_secret(run, capture, tmp_path, verb, line):
    """403 (S3) and 400 (Auto Scaling) come back with the request's token in their body, as
    AWS's errors may: the line shows neither it nor the secret, and names the key (as
    bootfetch.py's does)."""
    src = tmp_path / "src"
    src.write_text("x")
    capture.status = 400 if verb == "leave" else 403
    capture.body = f"<Error><Code>Denied</Code><Token>{TOKEN}</Token></Error>".encode()
    args = {"get": ("k", str(tmp_path / "k")), "put": (str(src), "k"), "count": ("k/",),
            "leave": ()}[verb]
    result = run(verb, *args, env={"AWS_ENDPOINT_URL_S3": capture.url,
                                   "AWS_ENDPOINT_URL_AUTO_SCALING": capture.url})
    assert result.returncode == 1
    assert one_line(result) == line
    assert result.stdout == ""
    assert len(capture.requests) == 1
    assert not list(tmp_path.glob("k*"))


def test_unreachable_endpoint_names_curl_s_error(run, tmp_path):
    """curl's own line comes first (the boot logs every line, and fails with the last)."""
    src = tmp_path / "s"
    src.write_text("x")
    result = run("put", str(src), "k", env={"AWS_ENDPOINT_URL_S3":
                                            f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("curl: (7) ") and lines[1:] == ["bootfetch: put k: HTTP 000"]
    assert SECRET not in result.stderr and TOKEN not in result.stderr


def test_503_then_200_is_retried(run, capture, tmp_path):
    """curl --retry asks again a second later; only the last status is the result."""
    capture.statuses, capture.body = [503], b"payload"
    result = run("get", "k", str(tmp_path / "k"), env={"AWS_ENDPOINT_URL_S3": capture.url})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k").read_bytes() == b"payload"
    assert len(capture.requests) == 2


def test_no_metadata_service_is_one_line(run, tmp_path):
    result = run("get", "k", str(tmp_path / "k"), env={
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "bootfetch: get: no metadata token"


def test_unknown_verb_exits_2(run):
    result = run("fetch", "k")
    assert result.returncode == 2
    assert one_line(result) == "bootfetch: unknown verb fetch"
