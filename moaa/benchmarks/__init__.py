"""The benchmarks: one module each (``mt_bench``, ``arena_hard``, ``alpaca_eval``: the reader of its
published files and its scoring), ``decontaminate`` (13-gram overlap with their prompts), ``common``
(what those share) and ``files`` (``moaa fetch-benchmarks``)."""
