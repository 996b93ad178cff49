"""Benchmarks: each script prints ratios against a baseline measured in the
same run (raw nats-py, Celery + Redis, bare faster-whisper)."""
