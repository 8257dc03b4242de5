"""CLI command modules; each defines ``add_parsers(sub)`` and registers its commands with ``@command``."""
