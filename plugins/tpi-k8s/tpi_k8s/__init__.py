"""The Kubernetes backend of tpi. Importing this package imports no SDK."""

__all__ = ["K8sBackend", "K8sStorage"]
