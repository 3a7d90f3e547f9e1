"""Interoperability with other libraries' model formats (Hugging Face GPT-2 directories)."""
