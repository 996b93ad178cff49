"""The CPU node profile: int8 Whisper on the CPU, the shared pool."""
