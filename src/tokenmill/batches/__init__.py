"""The Batch API: uploaded JSONL files of requests, run at the lowest priority and half
price, with an output and an error file (``store`` keeps them, ``worker`` runs them)."""
