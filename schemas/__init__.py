"""Wire contracts of gpubus: models, codec, names. Imports nothing else of ours."""
