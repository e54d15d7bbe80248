//! A local stand-in for amoCRM: OAuth, API v4, webhooks, limits and fault injection.
