"""The benchmarks: readers of their published files and their scoring (``scoring``), the file fetcher
(``files``: ``moaa fetch-benchmarks``)."""

from moaa.benchmarks.scoring import *  # noqa: F403
from moaa.benchmarks.scoring import NgramIndex  # noqa: F401
