"""Walle's benchmark workloads, importable so that ``walle bench ...`` can run them.

``vm`` (task VM start latency and scaling, run as ``python -m walle_bench.vm``), ``machine`` (the
load other processes put on the machine while a figure was measured), ``pipeline`` (trigger
matching throughput) and ``compare`` (whole-model latency against peer engines). The scripts next
to this package (``bench/*.py``) are the command-line front ends; only they may use the
repository's test models.
"""
