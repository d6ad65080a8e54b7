"""Checkpoint I/O at the edges: safetensors files in the Hugging Face layout."""
