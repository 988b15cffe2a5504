"""The Spark runtime: re-sessionize history too big for one machine into the same lake.

``commands`` is import-light (the CLI loads it); ``job`` runs on Spark; ``stages`` holds the
functions the executors run, which call the core and nothing else of substance.
"""
