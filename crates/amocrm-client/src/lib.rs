//! amoCRM API v4 and OAuth client: no database, no web framework.
