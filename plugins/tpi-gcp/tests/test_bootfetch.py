"""bootfetch.py (GCP), the standard-library program a fresh GCE machine runs before anything is
installed.

It runs as a subprocess with only the environment a machine has: its token comes from a fake
metadata server, its storage requests go to fake-gcs-server (through the fault proxy, which
also records what was sent), its ``deleteInstances`` to a fake Compute Engine.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from tpi_gcp.boot import fetcher_program

from tpi_core.testing.faultproxy import FaultProxy


def _fakes():
    spec = importlib.util.spec_from_file_location(
        "tpi_gcp_fake_metadata", Path(__file__).with_name("fake_metadata.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakes = _fakes()
pytestmark = pytest.mark.integration

SCRIPT = Path(tempfile.mkdtemp(prefix="tpi-gcp-bootfetch-")) / "fetch.py"
"""The fetcher as the boot script writes it: the core's half, then GCP's."""
SCRIPT.write_text(fetcher_program())
PAGED = SCRIPT.with_name("fetch-paged.py")
"""The same with listing pages of 2 objects, to follow page tokens over a few objects."""
assert "\nPAGE = 1000 " in SCRIPT.read_text()
PAGED.write_text(SCRIPT.read_text().replace("\nPAGE = 1000 ", "\nPAGE = 2 ", 1))
PYTHON = os.environ.get("TPI_BOOTFETCH_PYTHON") or sys.executable


def make_bucket(url: str) -> str:
    name = f"tpi-{uuid.uuid4().hex[:16]}"
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return name


def upload(url: str, bucket: str, key: str, data: bytes) -> None:
    request = urllib.request.Request(
        f"{url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(key, safe='')}",
        data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(request, timeout=30).close()


def object_info(url: str, bucket: str, key: str) -> dict:
    with urllib.request.urlopen(
            f"{url}/storage/v1/b/{bucket}/o/{quote(key, safe='')}", timeout=10) as resp:
        return json.loads(resp.read())


def download(url: str, bucket: str, key: str) -> bytes:
    with urllib.request.urlopen(
            f"{url}/storage/v1/b/{bucket}/o/{quote(key, safe='')}?alt=media", timeout=30) as resp:
        return resp.read()


@pytest.fixture
def metadata():
    with fakes.FakeMetadata() as server:
        yield server


@pytest.fixture
def compute():
    with fakes.FakeCompute() as server:
        yield server


@pytest.fixture
def proxy(gcs_server):
    """The fault proxy in front of fake-gcs-server, faults off; ``proxy.seen`` holds
    (method, target, headers) of each request."""
    seen = []
    with FaultProxy(gcs_server.url, when=lambda m, t, h: seen.append((m, t, h)) or False,
                    rate=1.0) as fault:
        fault.seen = seen
        yield fault


@pytest.fixture
def bucket(gcs_server) -> str:
    return make_bucket(gcs_server.url)


@pytest.fixture
def run(tmp_path, metadata, compute, proxy, bucket):
    """``run(verb, *args)``: the program under ``python``, as on a machine: only PATH and
    the metadata, storage and compute overrides in its environment."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"bucket": bucket, "project": fakes.PROJECT,
                                  "region": fakes.REGION, "group": fakes.GROUP}))

    def run(*args, python=PYTHON, env=None, config_path=config, script=SCRIPT):
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GCE_METADATA_HOST": metadata.host, "STORAGE_EMULATOR_HOST": proxy.url,
                "TPI_GCE_ENDPOINT": compute.url}
        return subprocess.run([python, str(script), "--config", str(config_path), *args],
                              env={**base, **(env or {})}, check=False, capture_output=True,
                              text=True, timeout=60)

    return run


def one_line(result, metadata) -> str:
    """The stderr of a failed run: one line, no token in it."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert metadata.token not in result.stderr and "Bearer" not in result.stderr
    return lines[0]


def test_parses_as_python_3_6_and_starts_with_a_shebang():
    src = SCRIPT.read_text()
    ast.parse(src, feature_version=(3, 6))
    assert src.startswith("#!/usr/bin/env python3\n")
    assert len(src.encode()) < 10240


def test_get_round_trips_with_the_service_account_token(run, gcs_server, proxy, bucket,
                                                         metadata, tmp_path):
    data = os.urandom(3 << 20)
    key = "work dir/a+b~c é.bin"
    upload(gcs_server.url, bucket, key, data)
    dest = tmp_path / "out.bin"
    result = run("get", key, str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == data
    assert not Path(str(dest) + ".part").exists()
    method, target, headers = proxy.seen[-1]
    assert (method, target) == (
        "GET", f"/storage/v1/b/{bucket}/o/work%20dir%2Fa%2Bb~c%20%C3%A9.bin?alt=media")
    assert headers["authorization"] == "Bearer " + metadata.access_token(1)
    token_requests = [r for r in metadata.requests if r[1].endswith("/default/token")]
    assert len(token_requests) == 1
    assert token_requests[0][:2] == (
        "GET", "/computeMetadata/v1/instance/service-accounts/default/token")
    assert token_requests[0][2]["metadata-flavor"] == "Google"


def test_missing_key_exits_3_with_one_line(run, bucket, metadata, tmp_path):
    result = run("get", "no/such/key", str(tmp_path / "x"))
    assert result.returncode == 3, result.stderr
    assert one_line(result, metadata) == (
        f"bootfetch: get no/such/key: HTTP 404 No such object: {bucket}/no/such/key")
    assert not list(tmp_path.glob("x*"))


def test_missing_bucket_exits_1_with_one_line(run, metadata, tmp_path):
    config = tmp_path / "other.json"
    config.write_text(json.dumps({"bucket": "tpi-no-such-bucket-here"}))
    result = run("get", "k", str(tmp_path / "x"), config_path=config)
    assert result.returncode == 1
    assert one_line(result, metadata) == (
        "bootfetch: get k: HTTP 404 No such bucket: tpi-no-such-bucket-here")
    assert not list(tmp_path.glob("x*"))


def test_put_then_get(run, gcs_server, proxy, bucket, tmp_path):
    src = tmp_path / "status.json"
    src.write_text('{"state": "running"}\n')
    result = run("put", str(src), "reports/replica 0/status.json")
    assert result.returncode == 0, result.stderr
    method, target, headers = proxy.seen[-1]
    assert (method, target) == (
        "POST", (f"/upload/storage/v1/b/{bucket}/o?uploadType=media"
                 "&name=reports%2Freplica%200%2Fstatus.json"))
    assert headers["content-type"] == "text/plain"
    info = object_info(gcs_server.url, bucket, "reports/replica 0/status.json")
    assert info["contentType"] == "text/plain"
    assert download(gcs_server.url, bucket, "reports/replica 0/status.json") \
        == src.read_bytes()
    result = run("get", "reports/replica 0/status.json", str(tmp_path / "back"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_put_to_a_missing_bucket_exits_1(run, metadata, tmp_path):
    src = tmp_path / "s"
    src.write_text("x")
    config = tmp_path / "other.json"
    config.write_text(json.dumps({"bucket": "tpi-no-such-bucket-here"}))
    result = run("put", str(src), "k", config_path=config)
    assert result.returncode == 1
    assert one_line(result, metadata).startswith("bootfetch: put k: HTTP 404 ")


def test_count_follows_page_tokens(run, gcs_server, proxy, bucket, metadata):
    keys = [f"runs/a b/{i:03d}" for i in range(5)] + ["runs/a c", "other/1"]
    for key in keys:
        upload(gcs_server.url, bucket, key, b"")
    result = run("count", "runs/a b/", script=PAGED)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "5\n"
    lists = [t for m, t, _ in proxy.seen if f"/storage/v1/b/{bucket}/o?" in t]
    assert len(lists) == 3
    assert "prefix=runs%2Fa%20b%2F" in lists[0] and "maxResults=2" in lists[0]
    assert "fields=items%28name%29%2CnextPageToken" in lists[0]
    assert "pageToken=" not in lists[0]
    assert all("pageToken=" in t for t in lists[1:])
    assert metadata.tokens == 1  # one token for the three requests
    assert run("count", "runs/").stdout == "6\n"  # one page of GCS's size
    assert run("count", "nothing/").stdout == "0\n"


def test_a_token_about_to_expire_is_fetched_again(run, gcs_server, bucket, metadata):
    for i in range(3):
        upload(gcs_server.url, bucket, f"p/{i}", b"")
    metadata.expires_in = 30  # less than the minute of margin
    result = run("count", "p/", script=PAGED)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3\n"
    assert metadata.tokens == 2


def test_a_corrupt_body_fails_the_md5_check_and_is_fetched_again(run, gcs_server, proxy,
                                                                   bucket, tmp_path):
    data = os.urandom(1 << 20)
    upload(gcs_server.url, bucket, "k", data)
    proxy.clear()
    faults = iter([True])
    proxy.kinds = ("corrupt",)
    proxy.when = lambda m, t, h: m == "GET" and next(faults, False)
    result = run("get", "k", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k").read_bytes() == data
    assert [o for _m, _t, o in proxy.log] == ["corrupt", "forwarded"]


def test_503_twice_then_200_is_retried(run, gcs_server, proxy, bucket, tmp_path):
    upload(gcs_server.url, bucket, "k", b"payload")
    proxy.clear()
    faults = iter([True, True])
    proxy.kinds = ("slowdown",)
    proxy.when = lambda m, t, h: m == "GET" and next(faults, False)
    result = run("get", "k", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k").read_bytes() == b"payload"
    assert [o for _m, _t, o in proxy.log] == ["slowdown", "slowdown", "forwarded"]


def test_leave_deletes_this_instance_from_its_group(run, compute, metadata):
    result = run("leave")
    assert result.returncode == 0, result.stderr
    [(method, path, headers, body)] = compute.requests
    assert (method, path) == (
        "POST", (f"/compute/v1/projects/{fakes.PROJECT}/regions/{fakes.REGION}"
                 f"/instanceGroupManagers/{fakes.GROUP}/deleteInstances"))
    instance = f"zones/{fakes.ZONE}/instances/{fakes.INSTANCE}"
    assert json.loads(body) == {"instances": [instance]}
    assert headers["authorization"] == "Bearer " + metadata.access_token(1)
    assert headers["content-type"] == "application/json"
    asked = {p.removeprefix("/computeMetadata/v1/") for _m, p, _h, _b in metadata.requests}
    assert {"instance/name", "instance/zone"} <= asked


def test_leave_takes_project_and_region_from_the_metadata(run, compute, tmp_path):
    config = tmp_path / "other.json"
    config.write_text(json.dumps({"bucket": "b", "group": "other-g"}))
    result = run("leave", config_path=config)
    assert result.returncode == 0, result.stderr
    assert compute.requests[-1][1] == (
        f"/compute/v1/projects/{fakes.PROJECT}/regions/{fakes.REGION}"
        "/instanceGroupManagers/other-g/deleteInstances")


def test_a_refused_leave_is_one_line_with_googles_message(run, compute, metadata):
    message = (f"The resource 'projects/{fakes.PROJECT}/regions/{fakes.REGION}"
               f"/instanceGroupManagers/{fakes.GROUP}' was not found")
    compute.error = (404, message)
    result = run("leave")
    assert result.returncode == 1
    assert one_line(result, metadata) == f"bootfetch: leave: HTTP 404 {message}"
    assert len(compute.requests) == 1  # a 4xx is not tried again


def test_the_metadata_server_wants_its_header(metadata):
    """The fake answers 403 to a request without ``Metadata-Flavor: Google``, as GCE's."""
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(metadata.url + "/computeMetadata/v1/instance/name", timeout=5)
    err.value.close()
    assert err.value.code == 403


def _python36() -> str | None:
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for path in [shutil.which("python3.6"),
                 *sorted(map(str, pyenv.glob("3.6.*/bin/python3.6")))]:
        if path and subprocess.run([path, "-c", "pass"], capture_output=True,
                                   check=False).returncode == 0:
            return path
    return None


def test_runs_on_python_3_6(run, gcs_server, bucket, compute, tmp_path):
    """A stock image may have Python 3.6."""
    python = _python36()
    if python is None:
        pytest.skip("no python3.6 here")
    src = tmp_path / "s"
    src.write_bytes(os.urandom(1 << 20))
    assert run("put", str(src), "old/k", python=python).returncode == 0
    result = run("get", "old/k", str(tmp_path / "back"), python=python)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    assert run("count", "old/", python=python, script=PAGED).stdout == "1\n"
    assert run("get", "old/none", str(tmp_path / "n"), python=python).returncode == 3
    assert run("leave", python=python).returncode == 0
    assert len(compute.requests) == 1
