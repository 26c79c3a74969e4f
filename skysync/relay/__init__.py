"""Moving data between the database and SkyHub: the outbox relay out, the order queue in."""

from skysync.relay.batch import drain
from skysync.relay.relay import Relay

__all__ = ["Relay", "drain"]
