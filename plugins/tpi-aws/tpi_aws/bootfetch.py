# tpi bootfetch, AWS's half: S3 get/put/count and Auto Scaling leave, signed (SigV4) with
# this EC2 instance's role from IMDSv2. Follows tpi_core/boot/fetchbase.py in one file, whose
# names (hashlib, json, re, time, quote, urlencode, urlsplit, E, G, call, main) it uses.
# ruff: noqa: F821
import hmac
import xml.etree.ElementTree as X

SHA = hashlib.sha256


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


def signer(service):
    def auth(method, url, headers, body):
        p = SHA(body).hexdigest() if body is not None else "UNSIGNED-PAYLOAD"
        return sign(method, url, headers, p, G["C"], G["R"], service)
    return auth


def error_of(status, body):
    m = re.search(rb"<Code>([^<]*)</Code>", body)
    return (m.group(1).decode() if m else ""), bool(m and m.group(1) == b"NoSuchKey")


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
    return call(method, url + ("?" + query) * bool(query), auth=signer("s3"), error_of=error_of,
                **kw)


def setup(cfg):
    G.update(B=cfg.get("bucket", ""), R=cfg.get("region") or imds("placement/region"),
             ca=E.get("AWS_CA_BUNDLE"))
    role = imds("iam/security-credentials/").split()[0]
    G["C"] = json.loads(imds("iam/security-credentials/" + role))


def object_get(key, sink):
    s3("GET", key, sink=sink)


def object_put(key, data):
    s3("PUT", key, body=data, headers={"Content-Type": "text/plain"})


def body_md5(r):
    # the ETag of a single-part object not encrypted with KMS
    t = (r.getheader("ETag") or "").strip('"')
    kms = "kms" in (r.getheader("x-amz-server-side-encryption") or "")
    return t if re.match("[0-9a-f]{32}$", t) and not kms else None


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
    call("POST", url + "/", body.encode(), auth=signer("autoscaling"), error_of=error_of,
         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], globals()))
