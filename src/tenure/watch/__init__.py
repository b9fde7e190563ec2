"""The event log as notifications: selectors (:mod:`.selector`) and the hub that dispatches to watchers
(:mod:`.hub`)."""
