"""The ``lenvm-rl`` jobs, one module per subcommand (as ``trl/scripts`` sits apart from ``trl/trainer``).

Each module defines its argument dataclasses (``field(metadata={"help": ...})``), ``DATACLASSES`` (the tuple the CLI
parses YAML + flags into, in order) and ``main(*parsed)``, which runs the job. Jobs import the library; the library
never imports a job. Nothing here runs on import.
"""
