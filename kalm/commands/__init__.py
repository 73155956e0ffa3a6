"""Sub-commands of ``kalm``: each module has ``HELP``, ``add_arguments(parser)`` and
``run(args) -> (report dict, table text)``."""
