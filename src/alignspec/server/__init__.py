"""``alignspec serve``: the OpenAI-compatible HTTP server.

Layers, each in its own file, so a batched engine can replace the one-at-a-time worker without
touching HTTP:

- :mod:`.schemas` — request bodies with OpenAI's field names (what is accepted or refused);
- :mod:`.plan` — a validated request body -> a :class:`~.scheduler.GenerationRequest`;
- :mod:`.scheduler` — owns the model: a bounded queue and one generation at a time;
- :mod:`.responses` — OpenAI response and stream-chunk objects;
- :mod:`.metrics` — the Prometheus registry behind ``GET /metrics``;
- :mod:`.errors` — every user error as OpenAI's error object with a 4xx status;
- :mod:`.app` — the FastAPI routes; :mod:`.cli` — the ``serve`` subcommand.
"""
