"""Serving a catalogue on Ray Serve: an ingress deployment (the HTTP API) in front of one
deployment per model whose replicas each run one engine (``tokenmill serve --config --ray``)."""
