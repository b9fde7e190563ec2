"""The HTTP API: thin routers over the services, auth, errors, metrics and health."""
