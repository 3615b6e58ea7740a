"""tokenmill: a self-hosted, OpenAI-compatible text-generation service over llama.cpp."""

__version__ = "0.1.0"
