"""skysync: keeps a seller's SkyHub account in step with the seller's ERP through an outbox."""

__version__ = "0.1.0"
