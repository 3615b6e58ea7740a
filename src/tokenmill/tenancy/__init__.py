"""Keys, projects, service tiers, rate limits and the usage ledger (SQLAlchemy).

The HTTP layer authenticates with ``Tenancy.authenticate``, opens a ``Meter`` per request and
hands it to serving, which reports admission and tokens through the ``RequestMeter`` protocol.
"""
