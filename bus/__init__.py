"""Everything that talks to NATS. Knows nothing about media."""
