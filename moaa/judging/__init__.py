"""Row functions of the mixture of agents and of the judges, and their prompts."""
