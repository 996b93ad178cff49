"""The media work, independent of NATS: models, decoding, transcription."""
