"""The ``dockworker`` command line."""
