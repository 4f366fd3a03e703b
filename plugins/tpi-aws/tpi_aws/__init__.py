"""The AWS backend of tpi. Importing this package imports no SDK."""

__all__ = ["AWSBackend", "S3Storage"]
