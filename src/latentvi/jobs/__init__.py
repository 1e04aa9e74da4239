"""Thin jobs behind the command line: each builds its configs, calls the library (models, agents,
:mod:`latentvi.train`) and writes its figures and reports."""
