"""The sync engine: plan (pure) then execute (concurrent, retried, atomic).

    excludes.py   gitignore rules, TPI's storage.exclude, the always-excluded .tpi/
    walk.py       incremental local walk; symlinks never followed out of the tree
    manifest.py   key -> size, mtime_ns, md5 kept in storage between syncs
    plan.py       pure planners: local files x one remote listing x manifest -> actions
    retry.py      exponential backoff with full jitter
    execute.py    bounded worker pool fed from a stream; the tally
    upload.py     local tree -> storage
    download.py   storage -> local tree (atomic, never outside the destination)

The public entry points are :func:`tpi_core.storage.sync.upload_tree` and
:func:`tpi_core.storage.sync.download_tree`.
"""

DEFAULT_JOBS = 64
"""Files in flight at once by default. Small files are bound by round trips, not bandwidth:
on a local S3 server 64 moved 1,000 small files faster than 32 or 16 did (figures in
benchmarks/README.md), and a real region's latency widens the gap. Memory stays bounded:
a body above 1 MiB is never held whole, so each job holds a few MiB at most."""
