"""Google Cloud for tpi: the ``gs://`` storage, on the core's object-store transport."""
