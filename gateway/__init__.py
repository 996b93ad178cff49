"""The REST gateway: auth, submission, status, results, workers, metrics."""
