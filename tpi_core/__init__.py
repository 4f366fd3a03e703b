"""tpi: run scripts on cloud machines from a tasks.toml, with no server to keep alive."""

__version__ = "0.1.0"
