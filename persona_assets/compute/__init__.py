"""Whole-table computations (DuckDB) of raw affinities, vocabulary and normalised personas."""
