"""The model: config dataclasses, patch embedding, expert decoder, top-level MonoInternVL."""
