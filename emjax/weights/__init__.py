"""Checkpoint readers: the embedded default model (`embedded`) and GGUF files (`gguf_file`)."""
