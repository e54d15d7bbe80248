//! amoCRM marketplace connector.
