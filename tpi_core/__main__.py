"""``python -m tpi_core`` runs the ``tpi`` command."""

from tpi_core.cli import main

main()
