"""The object-store transport every cloud storage shares: HTTP/1.1 to a bucket, fast.

Layered as httpcore is; each layer knows only those below it::

    download.py    first 8 MiB, then the rest on a thread or in parallel ranges
    ranges.py      parallel ranged download, retry of one part or range
    endpoint.py    Endpoint: requests of one storage (protocol + pool + bulk), errors named
    protocol.py    ObjectProtocol: what a storage plugs in (locate, sign, error, md5, pin)
    pool.py        Pool: h11 requests on kept connections, Stream bodies
    bulk.py        BulkPool: large bodies read on worker threads (http.client)
    response.py    Response, Headers: bodies read straight from the stream
    proxy.py       proxies from the environment, CONNECT tunnels
    files.py       file bodies in chunks, bodies written to files; hashing.py: md5s
    network.py     the network seam: NetworkStream, AsyncioNetwork (mock.py: MockNetwork)
    exceptions.py  the transport's errors, mapped once at the seams

A storage (``tpi_aws.storage`` for S3) builds an :class:`~.endpoint.Endpoint` with its
:class:`~.protocol.ObjectProtocol` and keeps only what is its own: URLs, signing, listing,
multipart control, error codes. Nothing here imports a cloud SDK, and the package itself
imports nothing: modules are imported by name, so ``http.client`` (``bulk``) loads only
when a large body does.
"""
