#!/usr/bin/env python3
# tpi bootfetch: S3 get/put/count and Auto Scaling leave with this EC2 instance's role.
# Stdlib only, Python 3.6+. Exit 0 ok, 1 failed, 2 usage, 3 no such key (get).
import hashlib, hmac, json, os, re, ssl, sys, time  # noqa: E401
import http.client as H
import xml.etree.ElementTree as X
from urllib.parse import quote, urlencode, urlsplit

E, G, SHA = os.environ, {}, hashlib.sha256  # G: credentials C, region R, bucket B


class Fail(Exception):
    pass


def sign(method, url, headers, payload, creds, region, service, now=None):
    # SigV4; url's path and query are sent as they are (encoded, query sorted)
    u, t = urlsplit(url), time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    h = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    h.update({"host": re.sub(":(80|443)$", "", u.netloc), "x-amz-date": t})
    if service == "s3":
        h["x-amz-content-sha256"] = payload
    if creds.get("Token"):
        h["x-amz-security-token"] = creds["Token"]
    n = sorted(h)
    sh, scope = ";".join(n), f"{t[:8]}/{region}/{service}/aws4_request"
    c = "\n".join([method, u.path or "/", u.query] + [k + ":" + h[k] for k in n]
                  + ["", sh, payload])
    k = ("AWS4" + creds["SecretAccessKey"]).encode()
    for p in scope.split("/"):
        k = hmac.new(k, p.encode(), SHA).digest()
    s = f"AWS4-HMAC-SHA256\n{t}\n{scope}\n{SHA(c.encode()).hexdigest()}"
    s = hmac.new(k, s.encode(), SHA).hexdigest()
    h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
                          f"SignedHeaders={sh}, Signature={s}")
    return h


def call(method, url, body=None, headers={}, service=None, sink=None, what=""):
    # 5 tries: connection errors, timeouts, 5xx and 429 are retried
    u, err = urlsplit(url), ""
    for i in range(5):
        time.sleep(i and 2 ** i / 4)
        h = dict(headers)
        if service:
            p = SHA(body).hexdigest() if body is not None else "UNSIGNED-PAYLOAD"
            h = sign(method, url, h, p, G["C"], G["R"], service)
        c = H.HTTPConnection(u.netloc, timeout=30) if u.scheme == "http" else H.HTTPSConnection(
            u.netloc, timeout=30, context=ssl.create_default_context(cafile=E.get("AWS_CA_BUNDLE")))
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
        m = re.search(rb"<Code>([^<]*)</Code>", d)
        err = f"HTTP {r.status} {m.group(1).decode() if m else r.reason}{what}"
        if r.status < 500 and r.status != 429:
            raise Fail(err, 3 if m and m.group(1) == b"NoSuchKey" else 1)
    raise Fail(err, 1)


def imds(path, tok=[]):
    b = (E.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or "http://169.254.169.254").rstrip("/")
    if not tok:
        tok.append(call("PUT", b + "/latest/api/token", what=" (metadata token)", headers={
            "X-aws-ec2-metadata-token-ttl-seconds": "21600"}).decode())
    return call("GET", b + "/latest/meta-data/" + path, what=f" (metadata {path})",
                headers={"X-aws-ec2-metadata-token": tok[0]}).decode().strip()


def endpoint(name):
    if E.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        e = E.get("AWS_ENDPOINT_URL_" + name) or E.get("AWS_ENDPOINT_URL")
        return e and e.rstrip("/")


def s3(method, key, query="", **kw):
    e = endpoint("S3")
    url = e + "/" + G["B"] if e else f"https://{G['B']}.s3.{G['R']}.amazonaws.com"
    if key or not e:
        url += "/" + quote(key, safe="/~")
    return call(method, url + ("?" + query) * bool(query), service="s3", **kw)


def get(key, dest):
    part = dest + ".part"

    def sink(r):
        m, n = hashlib.md5(), 0
        f.seek(0)
        f.truncate()
        for b in iter(lambda: r.read(1 << 20), b""):
            f.write(b)
            m.update(b)
            n += len(b)
        t = (r.getheader("ETag") or "").strip('"')
        if n != int(r.getheader("Content-Length") or n) or (
                re.match("[0-9a-f]{32}$", t) and t != m.hexdigest()
                and "kms" not in (r.getheader("x-amz-server-side-encryption") or "")):
            raise OSError("short or corrupt body")  # retried
    try:
        with open(part, "wb") as f:
            s3("GET", key, sink=sink)
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.remove(part)


def count(prefix):
    n, tok = 0, None
    while True:
        q = "list-type=2&prefix=" + quote(prefix, safe="-_.~")
        if tok:
            q = "continuation-token=" + quote(tok, safe="-_.~") + "&" + q
        x = [(c.tag.split("}")[-1], c.text) for c in X.fromstring(s3("GET", "", q))]
        n += [k for k, _ in x].count("Contents")
        tok = dict(x).get("NextContinuationToken")
        if dict(x).get("IsTruncated") != "true" or not tok:
            return n


def leave():
    body = urlencode([("Action", "TerminateInstanceInAutoScalingGroup"),
                      ("InstanceId", imds("instance-id")),
                      ("ShouldDecrementDesiredCapacity", "true"), ("Version", "2011-01-01")])
    url = endpoint("AUTO_SCALING") or f"https://autoscaling.{G['R']}.amazonaws.com"
    call("POST", url + "/", body.encode(), service="autoscaling", headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})


def main(a):
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
        cfg = cfg or {}
        G.update(B=cfg.get("bucket", ""), R=cfg.get("region") or imds("placement/region"))
        role = imds("iam/security-credentials/").split()[0]
        G["C"] = json.loads(imds("iam/security-credentials/" + role))
        if verb == "get":
            get(a[1], a[2])
        elif verb == "put":
            with open(a[1], "rb") as f:
                s3("PUT", a[2], body=f.read(), headers={"Content-Type": "text/plain"})
        elif verb == "count":
            print(count(a[1]))
        else:
            leave()
        return 0
    except Exception as e:
        f = isinstance(e, Fail)
        msg = e.args[0] if f else f"{type(e).__name__}: {e}"
        print(f"bootfetch: {(verb + ' ' + key).strip()}: {msg}", file=sys.stderr)
        return e.args[1] if f else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
