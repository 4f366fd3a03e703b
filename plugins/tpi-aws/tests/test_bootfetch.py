"""bootfetch.py, the standard-library script a fresh machine runs before anything is installed.

It runs as a subprocess with only the environment a machine has (no AWS credentials): its
credentials come from a fake IMDSv2 server here, its requests go to moto (through the fault
proxy, which also records what was sent). moto checks no signature, so the signer is also
compared with botocore's for fixed credentials and time.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import botocore.auth
import pytest
import trustme
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tpi_aws.userdata import fetcher_program
from tpi_core.testing.emulators import REGION, free_port
from tpi_core.testing.faultproxy import FaultProxy

SCRIPT = Path(tempfile.mkdtemp(prefix="tpi-bootfetch-")) / "fetch.py"
"""The fetcher as the boot script writes it: the core's half, then AWS's."""
SCRIPT.write_text(fetcher_program())
ROLE = "tpi-task-role"
KEY_ID, SECRET = "ASIAIMDSFAKEKEY00001", "imds-secret/key+from-the-metadata-service"
TOKEN = "imds-session-token//+=" + "x" * 40
INSTANCE = "i-0123456789abcdef0"
PYTHON = os.environ.get("TPI_BOOTFETCH_PYTHON") or sys.executable
"""The interpreter that runs the script (``TPI_BOOTFETCH_PYTHON=python3.6`` for an old one)."""


def load():
    """The script as a module (it only runs its main under ``__main__``)."""
    spec = importlib.util.spec_from_file_location("bootfetch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeImds:
    """IMDSv2 on 127.0.0.1: a token first (PUT), then metadata with that token (else 401)."""

    def __init__(self, instance: str = INSTANCE, region: str = REGION):
        self.instance, self.region, self.requests = instance, region, []
        token = "imds-token-" + os.urandom(6).hex()
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                imds.requests.append(("PUT", self.path))
                if (self.path == "/latest/api/token"
                        and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")):
                    return self._send(200, token)
                self._send(400, "")

            def do_GET(self):
                imds.requests.append(("GET", self.path))
                if self.headers.get("X-aws-ec2-metadata-token") != token:
                    return self._send(401, "")
                creds = json.dumps({"Code": "Success", "Type": "AWS-HMAC",
                                    "AccessKeyId": KEY_ID, "SecretAccessKey": SECRET,
                                    "Token": TOKEN, "Expiration": "2099-01-01T00:00:00Z"})
                found = {"instance-id": imds.instance, "placement/region": imds.region,
                         "iam/security-credentials/": ROLE,
                         f"iam/security-credentials/{ROLE}": creds}
                value = found.get(self.path.removeprefix("/latest/meta-data/"))
                self._send(404, "") if value is None else self._send(200, value)

            def _send(self, status, text):
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds():
    server = FakeImds()
    yield server
    server.close()


@pytest.fixture
def proxy(moto_server):
    """The fault proxy in front of moto, faults off; ``proxy.seen`` holds request headers."""
    seen = []
    with FaultProxy(moto_server.url, when=lambda m, t, h: seen.append((m, t, h)) or False,
                    rate=1.0) as fault:
        fault.seen = seen
        yield fault


@pytest.fixture
def bucket(s3_env) -> str:
    name = "tpi-123456789012-" + REGION
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=name)
    return name


@pytest.fixture
def run(tmp_path, imds, proxy, bucket, monkeypatch, capsys):
    """``run(verb, *args)``: the script under ``python``, as on a machine: no AWS_* but
    the metadata and endpoint overrides; returns the CompletedProcess. With ``here=True``
    it runs in this process instead, its pauses recorded in ``run.sleeps``, not slept."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"bucket": bucket, "region": REGION, "group": "tpi-g"}))

    def run(*args, python=PYTHON, env=None, config_path=config, here=False):
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_ENDPOINT_URL": proxy.url}
        base |= {k: v for k, v in os.environ.items() if k.startswith("PYENV")}
        argv = ["--config", str(config_path), *args]
        if not here:
            return subprocess.run([python, str(SCRIPT), *argv], env={**base, **(env or {})},
                                  check=False, capture_output=True, text=True, timeout=60)
        module = load()
        module.time = types.SimpleNamespace(sleep=run.sleeps.append, gmtime=time.gmtime,
                                            strftime=time.strftime)
        with monkeypatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("AWS_")]:
                patch.delenv(name)
            for name, value in {**base, **(env or {})}.items():
                patch.setenv(name, value)
            capsys.readouterr()
            code = module.main(argv, vars(module))
            out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out.out, out.err)

    run.sleeps = []
    return run


def one_line(result) -> str:
    """The stderr of a failed run: one line, no secret in it."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert SECRET not in result.stderr and TOKEN not in result.stderr
    assert "Signature=" not in result.stderr
    return lines[0]


def test_parses_as_python_3_6_and_starts_with_a_shebang():
    src = SCRIPT.read_text()
    ast.parse(src, feature_version=(3, 6))
    assert src.startswith("#!/usr/bin/env python3\n")
    assert len(src.encode()) < 10240  # both halves; the packed user-data is checked by pack()


def test_credentials_come_from_the_metadata_service(run, imds):
    """The machine's env has no credentials: a token first, then the role's credentials."""
    result = run("count", "nothing/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0\n"
    assert imds.requests[0] == ("PUT", "/latest/api/token")
    assert ("GET", f"/latest/meta-data/iam/security-credentials/{ROLE}") in imds.requests


def test_get_12_mb_round_trips_signed_with_the_instance_role(run, proxy, bucket, tmp_path):
    data = os.urandom(12 << 20)
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key="work dir/a+b~c.bin",
                                                      Body=data)
    dest = tmp_path / "out.bin"
    result = run("get", "work dir/a+b~c.bin", str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == data
    assert not Path(str(dest) + ".part").exists()
    method, target, headers = proxy.seen[-1]
    assert (method, target) == ("GET", f"/{bucket}/work%20dir/a%2Bb~c.bin")
    assert headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
    assert f"/{REGION}/s3/aws4_request" in headers["authorization"]
    assert headers["x-amz-security-token"] == TOKEN
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


def test_missing_key_exits_3_with_one_line(run, tmp_path):
    result = run("get", "no/such/key", str(tmp_path / "x"))
    assert result.returncode == 3
    assert one_line(result) == "bootfetch: get no/such/key: HTTP 404 NoSuchKey"
    assert not list(tmp_path.glob("x*"))


def test_missing_bucket_exits_1(run, tmp_path):
    config = tmp_path / "other.json"
    config.write_text(json.dumps({"bucket": "no-such-bucket-here", "region": REGION}))
    result = run("get", "k", str(tmp_path / "x"), config_path=config)
    assert result.returncode == 1
    assert one_line(result) == "bootfetch: get k: HTTP 404 NoSuchBucket"


def test_a_destination_that_cannot_be_written_fails_at_once(run, bucket, tmp_path):
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key="k", Body=b"x")
    result = run("get", "k", str(tmp_path / "no" / "dir" / "k"), here=True)
    assert result.returncode == 1
    assert one_line(result).startswith("bootfetch: get k: FileNotFoundError")
    assert not any(run.sleeps)


def test_put_then_get(run, bucket, tmp_path):
    src = tmp_path / "status.json"
    src.write_text('{"state": "running"}\n')
    assert run("put", str(src), "reports/replica-0/status.json").returncode == 0
    head = boto3.client("s3", region_name=REGION).get_object(
        Bucket=bucket, Key="reports/replica-0/status.json")
    assert head["ContentType"] == "text/plain"
    assert head["Body"].read() == src.read_bytes()
    result = run("get", "reports/replica-0/status.json", str(tmp_path / "back"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_count_follows_continuation_tokens(run, proxy, bucket):
    s3 = boto3.client("s3", region_name=REGION)
    keys = [f"runs/a b/{i:05d}" for i in range(1003)] + ["runs/a c", "other/1"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b""), keys))
    result = run("count", "runs/a b/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1003\n"
    lists = [t for m, t, _ in proxy.seen if "list-type=2" in t]
    assert len(lists) == 2 and "continuation-token=" in lists[1]
    assert "prefix=runs%2Fa%20b%2F" in lists[0]
    assert run("count", "runs/").stdout == "1004\n"


def test_503_twice_then_200_is_retried(run, proxy, bucket, tmp_path):
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key="k", Body=b"payload")
    proxy.clear()
    faults = iter([True, True])
    proxy.kinds = ("slowdown",)
    proxy.when = lambda m, t, h: m == "GET" and next(faults, False)
    result = run("get", "k", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k").read_bytes() == b"payload"
    assert [o for _m, _t, o in proxy.log] == ["slowdown", "slowdown", "forwarded"]


def test_a_corrupt_body_fails_the_md5_check_and_is_fetched_again(run, proxy, bucket, tmp_path):
    data = os.urandom(1 << 20)
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key="k", Body=data)
    proxy.clear()
    faults = iter([True])
    proxy.kinds = ("corrupt",)
    proxy.when = lambda m, t, h: m == "GET" and next(faults, False)
    result = run("get", "k", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k").read_bytes() == data
    assert [o for _m, _t, o in proxy.log] == ["corrupt", "forwarded"]


def test_persistent_500_gives_up_after_five_attempts(run, proxy, tmp_path):
    proxy.clear()
    proxy.kinds = ("internal",)
    proxy.when = lambda m, t, h: True
    result = run("get", "k", str(tmp_path / "k"), here=True)
    assert result.returncode == 1
    assert one_line(result) == "bootfetch: get k: HTTP 500 InternalError"
    assert len(proxy.log) == 5
    assert [s for s in run.sleeps if s] == [0.5, 1, 2, 4]
    assert not list(tmp_path.glob("k*"))


def test_unreachable_endpoint_is_one_line(run, tmp_path):
    src = tmp_path / "s"
    src.write_text("x")
    dead = f"http://127.0.0.1:{free_port()}"
    result = run("put", str(src), "k", env={"AWS_ENDPOINT_URL_S3": dead}, here=True)
    assert result.returncode == 1
    assert one_line(result).startswith("bootfetch: put k: ConnectionRefusedError")


@pytest.fixture
def tls_endpoint(moto_server, tmp_path):
    """``https://127.0.0.1:PORT`` (TLS in front of moto, a certificate from a test CA) and
    the CA file that trusts it."""
    ca, context = trustme.CA(), ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    upstream = ("127.0.0.1", int(moto_server.url.rsplit(":", 1)[1]))
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(src, dst):
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            src.close()
            dst.close()

    def serve(conn):
        try:
            outer = context.wrap_socket(conn, server_side=True)
        except OSError:
            return conn.close()
        inner = socket.create_connection(upstream)
        threading.Thread(target=pipe, args=(inner, outer), daemon=True).start()
        pipe(outer, inner)

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", tmp_path / "ca.pem"
    listener.close()


def test_https_with_the_ca_bundle(run, tls_endpoint, tmp_path):
    url, ca_file = tls_endpoint
    src = tmp_path / "s"
    src.write_bytes(os.urandom(100_000))
    env = {"AWS_ENDPOINT_URL": url, "AWS_CA_BUNDLE": str(ca_file)}
    assert run("put", str(src), "tls/k", env=env).returncode == 0
    result = run("get", "tls/k", str(tmp_path / "back"), env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_an_untrusted_certificate_fails_at_once(run, tls_endpoint, tmp_path):
    result = run("get", "tls/k", str(tmp_path / "back"), here=True,
                 env={"AWS_ENDPOINT_URL": tls_endpoint[0]})
    assert result.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in one_line(result)
    assert not any(run.sleeps)


def test_no_token_no_metadata(imds):
    """The fake metadata service answers 401 to a request without the token."""
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(imds.url + "/latest/meta-data/instance-id", timeout=5)
    err.value.close()
    assert err.value.code == 401


def test_usage_exits_2(run):
    result = run("get", "only-one")
    assert result.returncode == 2
    assert one_line(result).startswith("bootfetch: usage:")


def test_leave_lowers_the_desired_capacity(run, imds, proxy):
    ec2 = boto3.client("ec2", region_name=REGION)
    scaling = boto3.client("autoscaling", region_name=REGION)
    ec2.create_launch_template(LaunchTemplateName="tpi-lt", LaunchTemplateData={
        "ImageId": "ami-12c6146b", "InstanceType": "t3.micro"})
    scaling.create_auto_scaling_group(
        AutoScalingGroupName="tpi-g", LaunchTemplate={"LaunchTemplateName": "tpi-lt"},
        MinSize=0, MaxSize=2, DesiredCapacity=2, AvailabilityZones=[f"{REGION}a"])
    group = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["tpi-g"])
    members = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
    assert len(members) == 2
    imds.instance = members[0]
    result = run("leave")
    assert result.returncode == 0, result.stderr
    method, target, headers = proxy.seen[-1]
    assert (method, target) == ("POST", "/")
    assert f"/{REGION}/autoscaling/aws4_request" in headers["authorization"]
    group = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["tpi-g"])
    group = group["AutoScalingGroups"][0]
    assert group["DesiredCapacity"] == 1
    assert [i["InstanceId"] for i in group["Instances"]] == members[1:]


def test_leave_from_outside_any_group_fails_with_the_error_code(run, imds):
    """AWS answers 400 ValidationError; moto 500 (retried, then given up)."""
    imds.instance = "i-00000000000000000"
    result = run("leave", here=True)
    assert result.returncode == 1
    assert one_line(result).startswith("bootfetch: leave: HTTP ")


# the signer, against botocore's --------------------------------------------------------

NOW = datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=datetime.UTC)
CREDS = {"AccessKeyId": "ASIAEXAMPLEKEYID0001", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG+x",
         "Token": "FwoGZXIvYXdzEXAMPLE//token+with/slashes="}


def botocore_headers(monkeypatch, auth_class, service, method, url, headers, body=None,
                     unsigned=False):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    if unsigned:
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    credentials = Credentials(CREDS["AccessKeyId"], CREDS["SecretAccessKey"], CREDS["Token"])
    auth_class(credentials, service, "eu-west-3").add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


S3_CASES = [
    ("GET", "https://tpi-1-eu-west-3.s3.eu-west-3.amazonaws.com/work/a%20b/%C3%A9+~x.tar.gz",
     {}, None),
    ("PUT", "https://tpi-1-eu-west-3.s3.eu-west-3.amazonaws.com/reports/replica-0/log.txt",
     {"Content-Type": "text/plain"}, b"line one\nline  two\n"),
    ("GET", ("https://tpi-1-eu-west-3.s3.eu-west-3.amazonaws.com/"
             "?continuation-token=1%2FAbc%2B%3D%3D&list-type=2&prefix=runs%2Fa%20b%2F"), {}, None),
    ("PUT", "http://127.0.0.1:5000/bucket/k%20ey", {"Content-Type": "text/plain"}, b""),
    ("GET", "http://127.0.0.1:5000/bucket?list-type=2&prefix=", {}, None),
]


@pytest.mark.parametrize(("method", "url", "headers", "body"), S3_CASES)
def test_s3_signature_equals_botocores(monkeypatch, method, url, headers, body):
    bootfetch = load()
    payload = hashlib.sha256(body).hexdigest() if body is not None else "UNSIGNED-PAYLOAD"
    mine = bootfetch.sign(method, url, headers, payload, CREDS, "eu-west-3", "s3",
                          now=NOW.timestamp())
    theirs = botocore_headers(monkeypatch, botocore.auth.S3SigV4Auth, "s3", method, url,
                              headers, body, unsigned=body is None)
    for name in ("x-amz-date", "x-amz-content-sha256", "x-amz-security-token"):
        assert mine[name] == theirs[name]
    assert mine["authorization"] == theirs["authorization"]


def test_autoscaling_signature_equals_botocores(monkeypatch):
    bootfetch = load()
    body = (b"Action=TerminateInstanceInAutoScalingGroup&InstanceId=i-0abc"
            b"&ShouldDecrementDesiredCapacity=true&Version=2011-01-01")
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    url = "https://autoscaling.eu-west-3.amazonaws.com/"
    mine = bootfetch.sign("POST", url, headers, hashlib.sha256(body).hexdigest(), CREDS,
                          "eu-west-3", "autoscaling", now=NOW.timestamp())
    theirs = botocore_headers(monkeypatch, botocore.auth.SigV4Auth, "autoscaling", "POST",
                              url, headers, body)
    assert "x-amz-content-sha256" not in mine
    assert mine["authorization"] == theirs["authorization"]


def test_signature_without_a_token_has_no_token_header(monkeypatch):
    bootfetch = load()
    creds = {k: v for k, v in CREDS.items() if k != "Token"}
    mine = bootfetch.sign("GET", "https://b.s3.eu-west-3.amazonaws.com/k", {},
                          "UNSIGNED-PAYLOAD", creds, "eu-west-3", "s3", now=NOW.timestamp())
    assert "x-amz-security-token" not in mine
    assert "x-amz-security-token" not in mine["authorization"]


# other interpreters, where this machine has them ----------------------------------------

def _other_pythons() -> list[str]:
    """Each other python3.6 to python3.14 on PATH, or else installed by pyenv."""
    found = []
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for minor in sorted(set(range(6, 15)) - {sys.version_info.minor}):
        candidates = [shutil.which(f"python3.{minor}"),
                      *sorted(map(str, pyenv.glob(f"3.{minor}.*/bin/python3.{minor}")))]
        for path in filter(None, candidates):
            if subprocess.run([path, "-c", "pass"], capture_output=True,
                              check=False).returncode == 0:
                found.append(path)
                break
    return found


@pytest.mark.parametrize("python", _other_pythons() or [None],
                         ids=lambda p: Path(p).name if p else "none")
def test_runs_on_other_pythons(run, bucket, tmp_path, python):
    """A stock image may have any Python from 3.6 on (PYENV_VERSION=3.6.15:3.7.16:...
    makes pyenv's shims answer)."""
    if python is None:
        pytest.skip("no other python3.6 to python3.14 on PATH")
    src = tmp_path / "s"
    src.write_bytes(os.urandom(3 << 20))
    assert run("put", str(src), "old/k", python=python).returncode == 0
    result = run("get", "old/k", str(tmp_path / "back"), python=python)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    assert run("count", "old/", python=python).stdout == "1\n"
    assert run("get", "old/none", str(tmp_path / "n"), python=python).returncode == 3
