"""Keys, projects, service tiers, rate limits and the usage ledger (SQLAlchemy).

The HTTP layer authenticates with ``Tenancy.authenticate``, opens a ``Meter`` per request and
hands it to serving, which reports admission and tokens through its ``UsageMeter`` protocol.
Tenancy knows nothing of the engine: the engine's queue bound is serving's ``RequestMeter``.
"""
