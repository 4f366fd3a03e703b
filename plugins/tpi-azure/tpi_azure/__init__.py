"""The Azure backend of tpi (so far: Azure Blob storage, ``az://container/prefix``)."""
