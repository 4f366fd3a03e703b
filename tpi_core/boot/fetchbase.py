#!/usr/bin/env python3
# tpi bootfetch: the cloud-independent half of a machine's fetcher (tpi_core.boot.script).
# Stdlib only, Python 3.6+. A cloud's half follows this text in the same file and defines
# setup(cfg), object_get(key, sink), object_put(key, data), count(prefix), leave(),
# body_md5(response) and error_of(status, body) -> (label, missing), then calls main.
# Exit 0 ok, 1 failed, 2 usage, 3 no such key (get).
import hashlib, json, os, re, ssl, sys, time  # noqa: F401
import http.client as H
from urllib.parse import quote, urlencode, urlsplit  # noqa: F401

E, G = os.environ, {}  # G: what the cloud's setup found (credentials, region, bucket, ca)


class Fail(Exception):
    pass


def call(method, url, body=None, headers={}, auth=None, sink=None, what="", error_of=None):
    # 5 tries: connection errors, timeouts, 5xx and 429 are retried; auth signs each try
    u, err = urlsplit(url), ""
    for i in range(5):
        time.sleep(i and 2 ** i / 4)
        h = auth(method, url, dict(headers), body) if auth else dict(headers)
        c = H.HTTPConnection(u.netloc, timeout=30) if u.scheme == "http" else H.HTTPSConnection(
            u.netloc, timeout=30, context=ssl.create_default_context(cafile=G.get("ca")))
        try:
            c.request(method, (u.path or "/") + ("?" + u.query) * bool(u.query), body, h)
            r = c.getresponse()
            d = sink(r) if sink and r.status == 200 else r.read()
        except ValueError:
            raise  # a certificate that fails verification
        except (OSError, H.HTTPException) as e:
            err = f"{type(e).__name__}: {e}"
            continue
        finally:
            c.close()
        if r.status // 100 == 2:
            return d
        label, missing = (error_of or (lambda s, b: ("", False)))(r.status, d)
        err = f"HTTP {r.status} {label or r.reason}{what}"
        if r.status < 500 and r.status != 429:
            raise Fail(err, 3 if missing else 1)
    raise Fail(err, 1)


def get_file(key, dest, cloud):
    # the body goes to DEST.part, checked (length, and md5 where the cloud gives one), then
    # renamed; a short or corrupt body is retried by call
    part = dest + ".part"

    def sink(r):
        m, n = hashlib.md5(), 0
        f.seek(0)
        f.truncate()
        for b in iter(lambda: r.read(1 << 20), b""):
            f.write(b)
            m.update(b)
            n += len(b)
        want = cloud["body_md5"](r)
        if n != int(r.getheader("Content-Length") or n) or (want and want != m.hexdigest()):
            raise OSError("short or corrupt body")
    try:
        with open(part, "wb") as f:
            cloud["object_get"](key, sink)
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.remove(part)


def main(a, cloud):
    cfg = a[1] if a[:1] == ["--config"] and len(a) > 1 else None
    a = a[2:] if cfg else a
    if not a or {"get": 3, "put": 3, "count": 2, "leave": 1}.get(a[0]) != len(a):
        print("bootfetch: usage: [--config FILE] get KEY DEST|put SRC KEY|count PREFIX|leave",
              file=sys.stderr)
        return 2
    verb, key = a[0], a[2] if a[0] == "put" else (a + [""])[1]
    try:
        if cfg:
            with open(cfg) as f:
                cfg = json.load(f)
        cloud["setup"](cfg or {})
        if verb == "get":
            get_file(a[1], a[2], cloud)
        elif verb == "put":
            with open(a[1], "rb") as f:
                cloud["object_put"](a[2], f.read())
        elif verb == "count":
            print(cloud["count"](a[1]))
        else:
            cloud["leave"]()
        return 0
    except Exception as e:
        f = isinstance(e, Fail)
        msg = e.args[0] if f else f"{type(e).__name__}: {e}"
        print(f"bootfetch: {(verb + ' ' + key).strip()}: {msg}", file=sys.stderr)
        return e.args[1] if f else 1
