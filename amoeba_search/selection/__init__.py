"""Stage 1: knowledge-preserving subnet selection.

- ``depth_dp``: the AmoebaLLM DP over layer subsets (resumable, prefix-cached through ``objective``);
- ``depth_baselines``: ShortGPT, angular distance, one-shot perplexity ranking, drop-last;
- ``width``: FLAP importance (and magnitude / activation / random) orders of FFN channels and GQA heads;
- ``calibration``: pluggable metrics (perplexity, multiple-choice accuracy / loss);
- ``pipeline``: all of it from settings to a ``SelectionStrategy`` (``strategy``), as ``amoeba-select`` runs it.

Imports are lazy: ``from amoeba_search.selection.pipeline import select_strategy``.
"""
