"""How a cloud machine gets and starts the agent (DESIGN.md section 6.1).

- :mod:`tpi_core.boot.bundle`: the agent bundle the CLI puts into the task's storage at
  apply: wheels of exactly the tpi distributions the user runs and the third-party
  requirements pinned to the versions installed beside the CLI.
- :mod:`tpi_core.boot.script`: the one boot script of every VM cloud. It finds or brings
  Python 3.11+, fetches the bundle with the machine's own identity (each cloud supplies a
  small standard-library fetcher), installs only from it, records each step's time, and
  reports a failed boot to the task's storage.
"""
