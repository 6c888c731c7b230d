"""The benchmarks: one module each (``mt_bench``, ``arena_hard``, ``alpaca_eval``: its config section, the
reader of its published files, its judge prompt and parser, its scoring), each a ``base.Benchmark`` listed in
``registry`` (report order), the one place the rest of moaa finds them; ``decontaminate`` (13-gram overlap
with their prompts), ``common`` (what the readers share) and ``files`` (``moaa fetch-benchmarks``)."""
