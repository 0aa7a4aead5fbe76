"""The video service: an OpenAI-style HTTP API and a web page on one persistent job queue (``serve.py``)."""
