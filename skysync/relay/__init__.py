"""Moving data between the database and SkyHub: the outbox relay out, the order queue in."""
