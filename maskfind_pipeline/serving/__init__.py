"""Serving the champion on production days: the engine that fetches, decodes, predicts, grades,
writes masks and commits log rows in bounded memory (`day`), and its options (`options`)."""
