"""Offline evaluation: score retrieval (and answers) on question sets; see eval/README.md."""
