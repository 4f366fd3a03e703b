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
