"""The notification stage: routing, grouping, inhibition and silences (pipeline), the persistent outbox,
the daily digest."""
