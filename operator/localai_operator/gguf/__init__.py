"""GGUF: the header of a model file, read before the model runs, and whether the model fits a GPU."""
