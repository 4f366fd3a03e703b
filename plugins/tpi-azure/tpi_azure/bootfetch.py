# tpi bootfetch, Azure's half: Blob get/put/count and leaving the scale set, with the task
# identity's tokens from the Instance Metadata Service. Follows tpi_core/boot/fetchbase.py in
# one file, whose names (json, re, time, quote, urlencode, E, G, Fail, call, main) it uses.
# ruff: noqa: F821
import base64
from email.utils import formatdate

BLOB_VERSION = "2025-11-05"
PAGE = 5000  # blobs per listing page (the service's most)
STORAGE, MANAGEMENT = "https://storage.azure.com/", "https://management.azure.com/"


def imds(path, query):
    # AZURE_POD_IDENTITY_AUTHORITY_HOST overrides the IMDS origin, as azure-identity reads it
    h = (E.get("AZURE_POD_IDENTITY_AUTHORITY_HOST") or "http://169.254.169.254").rstrip("/")
    h = h if "://" in h else "http://" + h
    return call("GET", h + "/metadata/" + path + "?" + urlencode(query),
                headers={"Metadata": "true"}, what=" (metadata " + path + ")").decode()


def token(resource):
    # the identity's token for a resource, fetched again five minutes before it expires
    if time.time() >= G.get("X" + resource, 0):
        q = {"api-version": "2018-02-01", "resource": resource}
        if G["I"]:
            q["client_id"] = G["I"]
        t = json.loads(imds("identity/oauth2/token", q))
        G["T" + resource] = t["access_token"]
        G["X" + resource] = time.time() + int(t.get("expires_in") or 0) - 300
    return G["T" + resource]


def blob_auth(method, url, headers, body):
    headers.update({"Authorization": "Bearer " + token(STORAGE), "x-ms-version": BLOB_VERSION,
                    "x-ms-date": formatdate(usegmt=True)})
    return headers


def arm_auth(method, url, headers, body):
    headers["Authorization"] = "Bearer " + token(MANAGEMENT)
    return headers


def error_of(status, body):
    # Blob's XML <Error><Code>, or ARM's JSON {"error": {"code", "message"}}; a missing blob
    # (not a missing container) is "missing"
    text = body.decode("utf-8", "replace")
    m = re.search(r"<Code>([^<]*)</Code>", text)
    if m:
        return m.group(1), m.group(1) == "BlobNotFound"
    try:
        e = json.loads(text)["error"]
        return (e.get("code", "") + ": " + e.get("message", "")).strip(": ")[:200], False
    except (ValueError, LookupError, TypeError, AttributeError):
        return (text.strip().splitlines() or [""])[0][:200], False


def base(name, default):
    b = (E.get(name) or default).rstrip("/")
    return b if "://" in b else "http://" + b


def setup(cfg):
    G.update(C=cfg.get("container", ""), EP=cfg.get("endpoint", "").rstrip("/"),
             I=cfg.get("client_id", ""), S=cfg.get("subscription", ""),
             RG=cfg.get("group", ""), N=cfg.get("scale_set", ""),
             ca=E.get("REQUESTS_CA_BUNDLE") or E.get("SSL_CERT_FILE"),
             M=base("TPI_AZURE_ENDPOINT", MANAGEMENT))


def blob(method, key, **kw):
    url = G["EP"] + "/" + quote(G["C"], safe="") + "/" + quote(key, safe="/")
    return call(method, url, auth=blob_auth, error_of=error_of, **kw)


def object_get(key, sink):
    blob("GET", key, sink=sink)


def object_put(key, data):
    blob("PUT", key, body=data, headers={"x-ms-blob-type": "BlockBlob",
                                         "Content-Type": "text/plain"})


def body_md5(r):
    # a whole blob's Content-MD5, when it was stored with one
    m = r.getheader("Content-MD5")
    return m and base64.b64decode(m).hex()


def count(prefix):
    n, q = 0, {"restype": "container", "comp": "list", "prefix": prefix, "maxresults": PAGE}
    url = G["EP"] + "/" + quote(G["C"], safe="") + "?"
    while True:
        page = call("GET", url + urlencode(q), auth=blob_auth, error_of=error_of).decode()
        n += len(re.findall(r"<Blob>", page))
        m = re.search(r"<NextMarker>([^<]+)</NextMarker>", page)
        if not m:
            return n
        q["marker"] = m.group(1)


def leave():
    # out of the scale set, its capacity lowered by one (nothing replaces this instance)
    if not G["N"]:
        raise Fail("no scale set in the config", 1)
    name = json.loads(imds("instance/compute", {"api-version": "2021-02-01"}))["name"]
    url = "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/" \
          "virtualMachineScaleSets/{}/delete?api-version=2026-04-01"
    body = json.dumps({"instanceIds": [name.rsplit("_", 1)[-1]]}).encode()
    call("POST", url.format(G["M"], G["S"], G["RG"], G["N"]), body,
         {"Content-Type": "application/json"}, auth=arm_auth, error_of=error_of)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], globals()))
