"""Pure decisions, no I/O: validation of outbox rows, coalescing, freeze and diff, backoff, order
status steps. Tested without a database or a network."""
