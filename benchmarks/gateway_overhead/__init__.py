"""Helpers of ``benchmarks/gateway_overhead.py``: the load client (`client`), the servers
under test (`servers`) and the statistics and report (`report`)."""
