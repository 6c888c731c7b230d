"""The Parquet contracts of every stage boundary, as plain JSON files (see README.md here). A package only so
that the files ship inside the wheel: ``moaa.core.schemas`` loads them with ``importlib.resources``."""
