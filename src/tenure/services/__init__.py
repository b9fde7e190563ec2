"""Services: one command per transaction over the domain model and the store."""
