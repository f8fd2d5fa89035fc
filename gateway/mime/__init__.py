"""MIME: parse by offsets, decode in streams, rewrite by segments."""
