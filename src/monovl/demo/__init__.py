"""The `monovl demo` world: a seeded synthetic visual curriculum (shapes, words, numbers, bar charts).

:mod:`monovl.demo.world` generates the EViP stage datasets (s1.1 noisy captions, s1.2 detailed
captions, s1.3 short-answer QA, s2 multi-turn chat) and a held-out evaluation set in the
InternVL conversation JSONL format; :mod:`monovl.demo.render` draws a scene from its metadata.
"""
