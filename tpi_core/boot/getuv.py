# Fetch the pinned uv wheel from PyPI, check its sha256, unpack the uv binary (Python 3.6+).
import hashlib, io, os, sys, time, urllib.request, zipfile

url, want, dest = sys.argv[1:4]
cached = os.path.join(os.path.dirname(dest), "uv.whl")
data = open(cached, "rb").read() if os.path.exists(cached) else b""
for attempt in range(5):
    if hashlib.sha256(data).hexdigest() == want:
        break
    try:
        data = urllib.request.urlopen(url, timeout=60).read()
    except Exception as exc:
        print("uv download: %s" % exc, file=sys.stderr)
        time.sleep(2 ** attempt)
else:
    sys.exit("uv download failed or its sha256 is not %s" % want)
os.makedirs(os.path.dirname(dest), exist_ok=True)
with open(cached + ".part", "wb") as out:
    out.write(data)
os.replace(cached + ".part", cached)
with zipfile.ZipFile(io.BytesIO(data)) as wheel:
    name = [n for n in wheel.namelist() if n.endswith(".data/scripts/uv")][0]
    with open(dest + ".part", "wb") as out:
        out.write(wheel.read(name))
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
