"""``sessionflow init --from SAMPLE``: a config proposed from a sample of any feed, and what it does to it.

``sample`` reads the sample's fields, ``roles`` and ``times`` pick the machine, event type, time
and event id, ``proposal`` puts the choices together, ``render`` writes them as a commented
sessionflow.toml, ``preview`` runs that config over the sample through the core; ``command`` is the
I/O. Nothing here is imported by a runtime.
"""
