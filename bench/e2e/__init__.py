"""The modules of bench/e2e_latency.py."""
