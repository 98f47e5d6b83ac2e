"""labelq's benchmark: ``python -m bench`` (see bench/__main__.py, docs/benchmarks.md and the lab notes in bench/NOTES.md).

Not part of the labelq package: it measures labelq against what users would run
instead (the bare model, transformers' pipeline, naive Celery) on generated images,
and simulates scale-out. Outputs go to bench/out/ (ignored by git) and docs/.
"""
