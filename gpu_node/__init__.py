"""The GPU node profile: CUDA device selection and the fast Whisper engine."""
