"""Training feature draft heads: ShareGPT data, feature extraction, the Accelerate loop with
training-time test, warm start, and the export for serving engines.

Layout, by job: ``data`` (conversations), ``prefill`` and ``features`` (extraction into
shards), ``batching``, ``unroll`` (the drafter's multi-step forward), ``loss``, ``evaluate``,
``window`` (running sums), ``checkpoint``, ``plot``, ``warmstart``, ``loop`` (the run),
``api`` (one call each), ``export`` (EAGLE layout), ``cli``. Nothing in the core imports
this package.
"""
