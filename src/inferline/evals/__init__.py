"""The evaluation loop: datasets (from files, traces and reviewed cases), scorers and
judges (with their calibration against human verdicts), experiments that run a dataset
through the gateway on several targets, and their statistics and reports."""
