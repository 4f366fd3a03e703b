# tpi bootfetch, GCP's half: GCS get/put/count (JSON API) and leaving the regional MIG, with
# this instance's service-account token from the metadata server. Follows
# tpi_core/boot/fetchbase.py in one file, whose names (json, re, time, quote, urlencode, E,
# G, Fail, call, main) it uses.
# ruff: noqa: F821
import base64

PAGE = 1000  # objects per listing page (GCS's most)


def md(path):
    # GCE_METADATA_HOST (host[:port]) overrides the metadata server, as Google's libraries do
    h = re.sub("^https?://", "", E.get("GCE_METADATA_HOST") or "metadata.google.internal")
    return call("GET", "http://" + h.rstrip("/") + "/computeMetadata/v1/" + path,
                headers={"Metadata-Flavor": "Google"}, what=" (metadata " + path + ")").decode()


def bearer(method, url, headers, body):
    if time.time() >= G.get("X", 0):  # the token, fetched again a minute before it expires
        t = json.loads(md("instance/service-accounts/default/token"))
        G.update(T=t["access_token"], X=time.time() + int(t.get("expires_in") or 0) - 60)
    headers["Authorization"] = "Bearer " + G["T"]
    return headers


def error_of(status, body):
    # Google's JSON error {"error": {"message", "errors": [{"reason"}]}}, else the text's
    # first line (alt=media answers text: "No such object: b/k"); never "missing" by itself:
    # object_get tells a missing object from a missing bucket
    try:
        e = json.loads(body.decode())["error"]
        label = e.get("message") or (e.get("errors") or [{}])[0].get("reason") or ""
    except (ValueError, LookupError, TypeError, AttributeError):
        label = body.decode("utf-8", "replace").strip()
        label = "" if label.startswith("<") else label
    return (label.splitlines() or [""])[0][:200], False


def base(name, default):
    b = (E.get(name) or default).rstrip("/")
    return b if "://" in b else "http://" + b


def gcs(method, path, **kw):
    return call(method, G["S"] + path, auth=bearer, error_of=error_of, **kw)


def objects(query):
    return "/storage/v1/b/" + quote(G["B"], safe="") + "/o?" + urlencode(query, quote_via=quote)


def setup(cfg):
    G.update(B=cfg.get("bucket", ""), P=cfg.get("project"), R=cfg.get("region"),
             N=cfg.get("group"), ca=E.get("REQUESTS_CA_BUNDLE") or E.get("SSL_CERT_FILE"),
             S=base("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com"),
             C=base("TPI_GCE_ENDPOINT", "https://compute.googleapis.com"))


def object_get(key, sink):
    b = quote(G["B"], safe="")
    try:
        gcs("GET", "/storage/v1/b/" + b + "/o/" + quote(key, safe="") + "?alt=media", sink=sink)
    except Fail as e:
        if not e.args[0].startswith("HTTP 404"):
            raise
        # GCS (and fake-gcs-server, "Not Found" to both) answers a missing object and a
        # missing bucket alike here: a one-item listing of the bucket tells them apart
        try:
            gcs("GET", objects({"prefix": key, "maxResults": 1, "fields": "kind"}))
        except Fail as f:
            if f.args[0].startswith("HTTP 404"):
                raise Fail("HTTP 404 No such bucket: " + G["B"], 1)
            raise
        raise Fail("HTTP 404 No such object: " + G["B"] + "/" + key, 3)


def object_put(key, data):
    gcs("POST", "/upload" + objects({"uploadType": "media", "name": key}), body=data,
        headers={"Content-Type": "text/plain"})


def body_md5(r):
    # md5 of the stored bytes (none for a composite object); a gzip-stored object comes
    # decompressed, so its hash does not apply
    if (r.getheader("x-goog-stored-content-encoding") or "identity") != "identity":
        return None
    m = re.search(r"md5=([A-Za-z0-9+/=]+)", r.getheader("x-goog-hash") or "")
    return m and base64.b64decode(m.group(1)).hex()


def count(prefix):
    n, q = 0, {"prefix": prefix, "maxResults": PAGE, "fields": "items(name),nextPageToken"}
    while True:
        page = json.loads(gcs("GET", objects(q)).decode())
        n += len(page.get("items") or [])
        if not page.get("nextPageToken"):
            return n
        q["pageToken"] = page["nextPageToken"]


def leave():
    # out of the regional MIG, its target size lowered by one (the answer is an operation)
    if not G["N"]:
        raise Fail("no group in the config", 1)
    name, zone = md("instance/name").strip(), md("instance/zone").strip().split("/")[-1]
    p = G["P"] or md("project/project-id").strip()
    url = "{}/compute/v1/projects/{}/regions/{}/instanceGroupManagers/{}/deleteInstances"
    body = json.dumps({"instances": ["zones/" + zone + "/instances/" + name]}).encode()
    call("POST", url.format(G["C"], p, G["R"] or zone.rsplit("-", 1)[0], G["N"]), body,
         {"Content-Type": "application/json"}, auth=bearer, error_of=error_of)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], globals()))
