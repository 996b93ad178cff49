"""The `gpubus` CLI, the embedded NATS server launcher, and deploy files."""
