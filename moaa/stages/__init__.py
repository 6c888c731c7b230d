"""One module per job: its config, its row functions and its run()."""
