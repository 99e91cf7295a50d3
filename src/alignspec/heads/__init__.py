"""Feature draft heads (EAGLE-2, FSPAD), inference side: config, modules, saving/loading.

Training them lives in :mod:`alignspec.training`, which imports this package, never the
other way round.
"""
