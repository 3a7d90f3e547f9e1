"""Data: reading corpora, built-in corpora, and tokenized memory-mapped arrays."""
