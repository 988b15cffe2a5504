"""A local AWS for development and tests: moto server on 127.0.0.1 plus a Lambda-like poller."""
