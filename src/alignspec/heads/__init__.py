"""Feature draft heads (EAGLE-2, FSPAD): modules, saving/loading, and their training."""
